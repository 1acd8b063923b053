"""Adapters as users name them: a run directory, a checkpoint, a handoff bundle or any PEFT folder.

Chat, evaluation and export all accept the same kinds of path; this module
turns each into the PEFT adapter folder behind it, finds the run it came from,
and the base model that run trained on.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError


def resolve_adapter(path: str | Path) -> Path:
    """The PEFT adapter folder behind `path`.

    Accepts an adapter folder itself, a run directory (its final adapter, else its
    handoff bundle, else its newest checkpoint), or a handoff bundle.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"adapter '{path}': no such folder")
    if (folder / "adapter_config.json").is_file():
        return folder
    for candidate in (folder / "adapter", folder / "handoff"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    checkpoints = sorted((folder / "checkpoints").glob("step-*")) if (folder / "checkpoints").is_dir() else []
    for candidate in reversed(checkpoints):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ModelError(f"adapter '{path}': no adapter_config.json here — pass a PEFT adapter folder, a run directory "
                     "or a handoff bundle")


def run_dir_of(path: str | Path) -> Path | None:
    """The run directory an adapter path belongs to (the run itself, or the parent of its adapter/handoff/
    checkpoint folder), or None for a free-standing PEFT folder."""
    folder = Path(path).expanduser().resolve()
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / "events.jsonl").is_file() and (candidate / "config.toml").is_file():
            return candidate
    return None


def base_for(adapters: list[str | Path], base: str | None = None, config_base: str | None = None) -> tuple[str, bool]:
    """The base model (and whether to load it in 4-bit) for a chat: `base` when given, else the first adapter's run
    config, else `config_base`, else the bundled default."""
    import tomllib

    from engine.config import DEFAULT_MODEL

    if base:
        return base, False
    for adapter in adapters:
        run = run_dir_of(resolve_adapter(adapter))
        if run is not None:
            model = tomllib.loads((run / "config.toml").read_text(encoding="utf-8")).get("model", {})
            if model.get("name"):
                return model["name"], bool(model.get("load_in_4bit"))
    return config_base or DEFAULT_MODEL, False


def attach_adapter(model, path: str | Path, base_name: str, *, trainable: bool = False):
    """`model` wrapped with the PEFT adapter behind `path` (as `resolve_adapter` finds it); an adapter that does not
    fit this base is one ModelError naming both."""
    import json

    from peft import PeftModel

    folder = resolve_adapter(path)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        try:
            trained_on = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            trained_on = None
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"adapter '{path}' does not fit base model '{base_name}' (trained on {trained_on!r}): "
                         f"{detail}") from None

