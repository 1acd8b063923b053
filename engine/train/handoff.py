"""Handoff bundles: everything another machine needs to continue a run, in one folder.

```
RUN_DIR/handoff/
  adapter_config.json, adapter_model.safetensors   the LoRA adapter (PEFT format)
  state.json          step, epoch, samples consumed, data seed, LR position, loss tail,
                      base-model fingerprint, LoRA shape, file manifest (sizes + SHA-256)
  config.toml         the resolved config; data paths point into data/ when the data was copied
  trainer_state.json, scheduler.pt                   Trainer's own resume state
  optimizer.pt, rng_state.pth                        only with session.with_optimizer
  data/train.jsonl, data/eval.jsonl   copies of the training (and eval) file when small enough
  reference/          a DPO run's starting adapter (its frozen reference), when it continued one
  RESUME.md           the exact command that continues the run
```

The bundle is rebuilt from hard links of the newest checkpoint and of the run's
private data copies (`RUN_DIR/data/`, copied when training starts, so editing
the source afterwards never changes a bundle), and swapped into place
atomically, so `handoff/` always holds one complete bundle. Its `state.json`
pins every other file (size and SHA-256); resuming refuses a bundle with
anything unlisted, linked, or named outside it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import RunConfig, dumps_config, load_config
from engine.errors import RunError
from engine.run.paths import staging_path
from engine.run.paths import STATE_FILE
from engine.train.checkpoint import (STATE_FORMAT, read_state, sha256_file, verify_checkpoint,
                                     write_linked_folder, write_state)

BUNDLE_DATA_LIMIT = 100 * 1024 * 1024  # bigger datasets stay where they are; RESUME.md says how to point at them
HASH_LIMIT = 2 * 1024 * 1024 * 1024


@dataclass
class DataFile:
    """One local data file the run reads, as recorded in state.json."""

    key: str  # "path" or "eval_path"
    source: str
    size: int
    sha256: str | None
    bundled_as: str | None = None
    copy: str | None = None  # the run's private copy that bundles link to

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUNDLE_DATA_NAMES = {"path": "train", "eval_path": "eval"}
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def bundle_data_name(key: str, source: Path) -> str:
    """`data/train.jsonl` or `data/eval.csv.gz`: fixed names, so they never grow with each resume."""
    suffix = "".join(source.suffixes[-2:]) if source.suffix in COMPRESSED_SUFFIXES else source.suffix
    return f"data/{BUNDLE_DATA_NAMES[key]}{suffix}"


def snapshot_data_files(config: RunConfig, run_dir: Path) -> list[DataFile]:
    """The run's local data files with size and hash; those small enough to travel are copied (not linked) into
    `RUN_DIR/data/` first, so the bundles carry what this run read even if the source is edited later."""
    files = []
    for key in ("path", "eval_path"):
        value = getattr(config.data, key)
        path = Path(value) if value else None
        if path is None or not path.is_file():
            continue
        size = path.stat().st_size
        if size > BUNDLE_DATA_LIMIT:
            digest = sha256_file(path) if size <= HASH_LIMIT else None
            files.append(DataFile(key, str(path.resolve()), size, digest))
            continue
        name = bundle_data_name(key, path)
        copy = Path(run_dir) / name
        copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = staging_path(copy)
        try:
            shutil.copyfile(path, temporary)
            os.replace(temporary, copy)
        finally:
            temporary.unlink(missing_ok=True)
        files.append(DataFile(key, str(path.resolve()), copy.stat().st_size, sha256_file(copy), name, str(copy)))
    return files


def resume_instructions(state: dict[str, Any], config: RunConfig, data_files: list[DataFile],
                        bundle_path: Path) -> str:
    """The text of RESUME.md: what the bundle holds and the exact command that continues it."""
    step, planned = state.get("global_step"), state.get("max_steps")
    travelling = [f for f in data_files if f.bundled_as]
    staying = [f for f in data_files if not f.bundled_as]
    lines = [
        "# loradeck handoff bundle",
        "",
        f"Step {step} of {planned} (epoch {state.get('epoch') or 0:.3f}) of a LoRA run on "
        f"`{config.model.name}` (r={config.lora.r}, targets {', '.join(config.lora.target_modules)}), "
        f"saved because: {state.get('reason')}.",
        "",
        "## Continue on any machine",
        "",
        "Copy this whole folder, install loradeck, then:",
        "",
        "```",
        f"loradeck resume {shlex.quote(str(bundle_path))}",
        "loradeck resume ./handoff --session 12h        # from the folder holding a copy of it",
        "```",
        "",
        f"Training continues at step {(step or 0) + 1} with the same data order, LR schedule position and "
        "adapter weights" + (", optimizer and RNG state." if state.get("with_optimizer") else
                             " (a fresh optimizer: set session.with_optimizer for an exact continuation)."),
        "",
    ]
    if travelling:
        lines += ["The training data travels with the bundle (`data/`); nothing else is needed.", ""]
    for file in staying:
        lines += [f"The data file `{file.source}` ({file.size / 1e6:.0f} MB) is too big to travel with the "
                  "bundle; on the new machine add", "",
                  "```", f"--set data.{file.key}=/path/to/{Path(file.source).name}", "```", ""]
    lines += ["`loradeck status <this folder>` summarises the bundle.", ""]
    return "\n".join(lines)


REFERENCE_FOLDER = "reference"
REFERENCE_FILES = ("adapter_config.json", "adapter_model.safetensors")


def keep_reference_adapter(adapter: Path, run_dir: Path) -> Path:
    """A private copy of the adapter a run continues (`RUN_DIR/reference/`), so its bundles carry it: a DPO
    run's reference is that adapter, and a resume elsewhere needs it. Returns the copy."""
    target = Path(run_dir) / REFERENCE_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name in REFERENCE_FILES:
        shutil.copy2(Path(adapter) / name, target / name)
    return target


def write_handoff(handoff_dir: Path, checkpoint: Path, state: dict[str, Any], config: RunConfig,
                  data_files: list[DataFile], reference: Path | None = None) -> Path:
    """Atomically replace `handoff_dir` with a bundle made from `checkpoint` (hard links) plus the run's data
    copies, the adapter it continued (`reference`) and RESUME.md, its state.json pinning every file."""
    bundle_config = dataclasses.replace(config, data=dataclasses.replace(config.data),
                                        model=dataclasses.replace(config.model))
    links: dict[str, Path] = {}
    for file in data_files:
        if file.bundled_as and file.copy:
            links[file.bundled_as] = Path(file.copy)
            # Relative paths in a config resolve against its folder: the bundle itself.
            setattr(bundle_config.data, file.key, file.bundled_as)
    if reference is not None:
        for name in REFERENCE_FILES:
            links[f"{REFERENCE_FOLDER}/{name}"] = Path(reference) / name
        bundle_config.model.adapter = REFERENCE_FOLDER
    text = {"config.toml": dumps_config(bundle_config),
            "RESUME.md": resume_instructions(state, config, data_files, handoff_dir.resolve())}
    checkpoint_files = {name: entry for name, entry in read_state(checkpoint)["files"].items() if name not in text}

    def pin_every_file(folder: Path) -> None:
        manifest = dict(checkpoint_files)
        for name in text:
            manifest[name] = {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        for file in data_files:
            if file.bundled_as in links:
                manifest[file.bundled_as] = {"size": file.size, "sha256": file.sha256}
        for name in links:
            if name.startswith(REFERENCE_FOLDER + "/"):
                manifest[name] = {"size": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        write_state(folder, state, manifest)

    return write_linked_folder(handoff_dir, checkpoint, skip=(STATE_FILE, *text), extra_text=text,
                               extra_links=links, finish=pin_every_file)


@dataclass
class Bundle:
    """A verified handoff bundle (or checkpoint) ready to resume from."""

    path: Path
    state: dict[str, Any]
    config: RunConfig
    notes: list[str] = field(default_factory=list)


def open_bundle(path: str | Path, overrides: list[str] = ()) -> Bundle:
    """Verify a bundle and load its config with `overrides`; RunError for partial, corrupt or incompatible input.

    Accepts a bundle folder, a checkpoint folder, or a run directory (its handoff/).
    Refuses overrides that change the base model or the adapter's shape.
    """
    folder = Path(path).expanduser()
    if (folder / "handoff" / STATE_FILE).is_file() and not (folder / STATE_FILE).is_file():
        folder = folder / "handoff"
    state = verify_checkpoint(folder)
    original = load_config(folder / "config.toml")
    notes = []
    if original.session.deadline and not any(o.startswith("session.deadline=") for o in overrides):
        # An absolute deadline belonged to the old machine's session; the new one has its own.
        overrides = ["session.deadline="] + list(overrides)
        notes.append(f"the bundle's session deadline ({original.session.deadline}) belonged to the old session "
                     "and is dropped; pass --deadline or --session for this one")
    if original.distributed.strategy == "fsdp" and "distributed.processes=1" in overrides \
            and not any(o.startswith("distributed.strategy=") for o in overrides):
        overrides = list(overrides) + ["distributed.strategy=ddp"]
        notes.append("saved with FSDP, resumed by one process: distributed.strategy fsdp -> ddp (nothing to shard; "
                     "the one process holds the whole model)")
    checked = ["batch_size", "grad_accum", "seed", "group_by_length"]
    if "group_by_length" not in state and not any(o.startswith("train.group_by_length=") for o in overrides):
        # Saved before batches were grouped by length: replay that run's plain shuffled order.
        overrides = list(overrides) + ["train.group_by_length=false"]
        checked.remove("group_by_length")
    config = load_config(folder / "config.toml", list(overrides))
    refuse_incompatible(state, config)
    keep = keep_global_batch(state, original, config, overrides)
    if keep:
        notes.append(keep)
        checked.remove("grad_accum")
    for key in checked:
        before, after = getattr(original.train, key), getattr(config.train, key)
        if before != after:
            notes.append(f"train.{key} changed from {before} to {after}: the data order after step "
                         f"{state.get('global_step')} will differ from an uninterrupted run")
    recorded = {entry["key"]: entry for entry in state.get("data_files", []) if isinstance(entry, dict)}
    for key in ("path", "eval_path"):
        value = getattr(config.data, key)
        entry = recorded.get(key)
        if not value:
            continue
        if not Path(value).exists():
            raise RunError(f"{folder}: the data file {value} is not on this machine — add "
                           f"--set data.{key}=/path/to/{Path(value).name}")
        if value == getattr(original.data, key):  # the bundle's choice, not the user's --set
            notes += confine_bundle_data(folder, state, key, Path(value), entry)
        if entry and entry.get("sha256") and Path(value).is_file() and Path(value).stat().st_size <= HASH_LIMIT:
            if sha256_file(Path(value)) != entry["sha256"]:
                notes.append(f"data.{key} ({value}) differs from the file the run started with: the sample "
                             "order continues by position, not by content")
    if config.model.adapter and config.model.adapter == original.model.adapter:
        confine_reference(folder, state, Path(config.model.adapter))
    return Bundle(folder, state, config, notes)


def keep_global_batch(state: dict[str, Any], original: RunConfig, config: RunConfig, overrides) -> str | None:
    """Resuming under another number of processes: set `train.grad_accum` so that processes x batch_size x
    grad_accum stays the bundle's global batch — the same rows per step, in the same order — unless the user set
    the batch or accumulation; returns the note to show, or None when nothing changed."""
    from engine.train.distributed import resolve_processes

    def positive(value, default: int) -> int:  # state.json comes from another machine: numbers or nothing
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    saved_world = positive(state.get("world_size"), 1)
    world = resolve_processes(config.distributed.processes)
    chosen = any(o.startswith(("train.grad_accum=", "train.batch_size=")) for o in overrides)
    if world == saved_world or chosen:
        return None
    global_batch = positive(state.get("global_batch"),
                            saved_world * original.train.batch_size * original.train.grad_accum)
    per_step = world * config.train.batch_size
    if global_batch % per_step:
        return (f"saved by {saved_world} process(es), resumed by {world}: a global batch of {global_batch} rows "
                f"cannot be split into {world} x {config.train.batch_size}-row batches, so the rows per step "
                "change; set train.batch_size so that it divides")
    before, config.train.grad_accum = config.train.grad_accum, global_batch // per_step
    return (f"saved by {saved_world} process(es), resumed by {world}: train.grad_accum {before} -> "
            f"{config.train.grad_accum} keeps the global batch of {global_batch} rows, so the sample sequence "
            "continues exactly")


def confine_reference(folder: Path, state: dict[str, Any], adapter: Path) -> None:
    """RunError unless the bundle's starting adapter is the `reference/` it carries, every file pinned: a crafted
    config.toml must not make a resume load (and the next bundle carry) an adapter from elsewhere."""
    resolved, root = adapter.resolve(), folder.resolve()
    pinned = state.get("files") or {}
    if resolved == (root / REFERENCE_FOLDER).resolve() and \
            all(f"{REFERENCE_FOLDER}/{name}" in pinned for name in REFERENCE_FILES):
        return
    raise RunError(f"{folder}: config.toml points model.adapter at {adapter}, which is not the reference adapter "
                   "the bundle carries — refusing to load it; pass --set model.adapter=PATH to continue from an "
                   "adapter of this machine")


def confine_bundle_data(folder: Path, state: dict[str, Any], key: str, path: Path,
                        entry: dict[str, Any] | None) -> list[str]:
    """RunError unless the bundle's own data path is one of its pinned files, or the file too big to travel
    that its state names; notes to show for the latter. A crafted config.toml must not make a resume read (and
    the next bundle carry) a private file of this machine."""
    resolved, root = path.resolve(), folder.resolve()
    if resolved.is_relative_to(root):
        inside = resolved.relative_to(root).as_posix()
        if inside in (state.get("files") or {}) or state.get("format") != STATE_FORMAT:
            return []
    elif entry and not entry.get("bundled_as") and entry.get("source") == str(resolved):
        return [f"data.{key} is read from {resolved} on this machine (too big to travel with the bundle)"]
    raise RunError(f"{folder}: config.toml points data.{key} at {path}, which is not a file the bundle carries — "
                   f"refusing to read it; pass --set data.{key}=/path/to/your/data to train on a file of this machine")


def refuse_incompatible(state: dict[str, Any], config: RunConfig) -> None:
    """RunError naming every difference between the bundle's base model / adapter shape and `config`."""
    lora = state.get("lora") or {}
    problems = []
    if lora.get("r") is not None and lora["r"] != config.lora.r:
        problems.append(f"lora.r={config.lora.r} (bundle: {lora['r']})")
    if lora.get("target_modules") is not None and list(lora["target_modules"]) != list(config.lora.target_modules):
        problems.append(f"lora.target_modules={list(config.lora.target_modules)} (bundle: {lora['target_modules']})")
    if problems:
        raise RunError("cannot resume: this run would use " + "; ".join(problems) +
                       " — an adapter only continues on the base and shape it was trained with")


def resumed_line(step: int, epoch: float | None, with_optimizer: bool | None) -> str:
    """What a resume prints (foreground, or the CLI once a detached worker took the bundle): where it goes on and
    whether the optimizer state came along."""
    return (f"resumed at step {step + 1} (epoch {epoch or 0:.3f}, "
            f"{'with' if with_optimizer else 'without'} optimizer state)")


def describe_bundle(bundle_path: str | Path) -> list[str]:
    """Lines for `loradeck status BUNDLE`: what it holds, whether it verifies, the command that continues it."""
    folder = Path(bundle_path)
    try:
        state = verify_checkpoint(folder)
        verdict = "complete (every file matches its checksum)"
    except RunError as exc:
        state, verdict = None, f"NOT resumable: {exc}"
    lines = [f"bundle     {folder}", f"check      {verdict}"]
    if state:
        base = state.get("base_model") or {}
        lora = state.get("lora") or {}
        tail = state.get("loss_tail") or []
        lines += [
            f"step       {state.get('global_step')}/{state.get('max_steps')}   epoch "
            f"{(state.get('epoch') or 0):.3f}   samples {state.get('samples_consumed')}",
            f"model      {base.get('name')} (fingerprint {base.get('hash')})   LoRA r={lora.get('r')} "
            f"alpha={lora.get('alpha')} targets {', '.join(lora.get('target_modules') or [])}",
            f"loss       {tail[-1][1]:.4f} at step {tail[-1][0]}" if tail else "loss       —",
            f"optimizer  {'included (exact resume)' if state.get('with_optimizer') else 'not included (adapter-only resume)'}",
            f"saved      {state.get('reason')}",
            f"continue   loradeck resume {shlex.quote(str(folder))}",
        ]
    return lines
