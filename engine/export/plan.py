"""What an export will do, checked before any weight is loaded: the adapter, its base, the GGUF types, the chat
template for Ollama, and whether the disk has room for all of it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.prompts import PromptItem
from engine.errors import ConfigError, ModelError
from engine.export.gguf_file import (PYTHON_TYPES, check_gguf_types, estimate_gguf_bytes, gguf_architecture,
                                     parameter_count)
from engine.export.ollama import OllamaTemplate, translate_template

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
CONFIG_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
OLLAMA_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?(:[A-Za-z0-9._-]+)?")
DISK_MARGIN = 1.05
CHECK_PROMPTS = 4
FALLBACK_PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.",
                    "List three prime numbers.", "What is 12 + 30?"]


@dataclass
class ExportPlan:
    """Everything `run_export` needs, validated."""

    adapter: Path
    run_dir: Path | None
    base: str  # model.name as the run had it (alias, folder or hub id)
    base_folder: Path
    base_config: dict
    trained_4bit: bool
    dtype: str  # fp32 / fp16 / bf16
    out: Path
    name: str
    gguf_types: list[str]
    ollama_name: str | None
    ollama: OllamaTemplate | None
    prompts: list[PromptItem]
    format_regex: str
    system_prompt: str
    parameters: int  # of the base model, from its safetensors headers
    estimated_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def merged(self) -> Path:
        return self.out / "merged"

    def gguf_path(self, type_name: str) -> Path:
        return self.out / f"{self.name}-{type_name}.gguf"


def export_tokenizer(adapter: Path, base_folder: Path):
    """The tokenizer the adapter trained with: the one saved beside it when there is one, else its base's — with
    a pad token, as training had."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").is_file()
                                              else base_folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _run_settings(run_dir: Path | None) -> dict:
    import tomllib

    if run_dir is None:
        return {}
    return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))


def _check_prompts(run_dir: Path | None, system_prompt: str, count: int) -> list[PromptItem]:
    from engine.data.prompts import held_out_prompts
    from engine.errors import LoradeckError

    items: list[PromptItem] = []
    if run_dir is not None:
        try:
            items = held_out_prompts(run_dir, limit=count)
        except LoradeckError:
            items = []  # no held-out rows here: the fixed prompts below still exercise the model
    if len(items) < count:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        items += [PromptItem([*system, {"role": "user", "content": text}], None, "loradeck's check prompts")
                  for text in FALLBACK_PROMPTS[:count - len(items)]]
    return items


def plan_export(source: str | Path, out: str | Path, *, gguf_types: list[str] = (), ollama: str | None = None,
                dtype: str | None = None, base: str | None = None, name: str | None = None,
                check_prompts: int = CHECK_PROMPTS) -> ExportPlan:
    """Check an export's inputs before anything heavy: a one-line LoradeckError for an unknown source, GGUF type,
    architecture, chat template, Ollama name, a non-empty foreign output folder, or a disk without room."""
    from engine.models.adapters import resolve_adapter, run_dir_of
    from engine.models.loading import resolve_model
    from engine.run.space import folder_bytes, free_bytes

    adapter = resolve_adapter(source).resolve()
    run_dir = run_dir_of(adapter)
    settings = _run_settings(run_dir)
    model_section = settings.get("model", {})
    data_section = settings.get("data", {})
    if base is None:
        base = model_section.get("name") or json.loads((adapter / "adapter_config.json").read_text(
            encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{source}: the adapter does not say which base model it belongs to — pass --base")
    base_folder = Path(resolve_model(base))
    if not (base_folder / "config.json").is_file():
        raise ModelError(f"base model '{base}': export needs a local folder (download it first and pass --base DIR)")
    base_config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    types = check_gguf_types(list(gguf_types))
    if types:
        gguf_architecture(base_config)
    if dtype is None:
        dtype = CONFIG_DTYPES.get(str(base_config.get("dtype") or base_config.get("torch_dtype")), "fp16")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: choose fp16, bf16 or fp32")
    if ollama is not None:
        if not OLLAMA_NAME.fullmatch(ollama):
            raise ConfigError(f"--ollama {ollama!r}: an Ollama model name is lower-case letters, digits, '.', '_' "
                              "and '-' (optionally namespace/name:tag)")
        if not types:
            raise ConfigError("--ollama needs a GGUF file to point at — add --gguf q8_0 (or f16)")
    system_prompt = data_section.get("system_prompt", "")
    translated = None
    if ollama is not None:
        translated = translate_template(export_tokenizer(adapter, base_folder), system_prompt=system_prompt)

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file is in the way — choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "EXPORT.md").is_file():
        raise ConfigError(f"--out {out}: the folder holds other files — choose an empty or new folder (an earlier "
                          "export's folder is replaced)")
    export_name = name or _default_name(run_dir, adapter)
    parameters = parameter_count(base_folder)
    estimated = {"merged": int(parameters * DTYPE_BYTES[dtype])}
    for type_name in types:
        estimated[type_name] = estimate_gguf_bytes(base_folder, base_config, type_name if type_name in PYTHON_TYPES
                                                   else "f16")
    if any(t not in PYTHON_TYPES for t in types) and "f16" not in types:
        estimated["f16 (for llama-quantize)"] = estimate_gguf_bytes(base_folder, base_config, "f16")
    existing = folder_bytes(out) if out.is_dir() else 0
    needed = int(sum(estimated.values()) * DISK_MARGIN) - existing
    probe = out if out.is_dir() else next(p for p in out.parents if p.exists())
    free = free_bytes(probe)
    if needed > free:
        raise ModelError(f"--out {out}: not enough disk — the export needs about {needed / 1e9:.2f} GB and "
                         f"{free / 1e9:.2f} GB are free; free space or choose another --out")
    if check_prompts < 1:
        raise ConfigError(f"--check-prompts must be at least 1, not {check_prompts}")
    prompts = _check_prompts(run_dir, system_prompt, check_prompts)
    return ExportPlan(adapter, run_dir, base, base_folder, base_config, bool(model_section.get("load_in_4bit")),
                      dtype, out, export_name, types, ollama, translated, prompts,
                      settings.get("eval", {}).get("format_regex", ""), system_prompt, parameters, estimated)


def _default_name(run_dir: Path | None, adapter: Path) -> str:
    raw = (run_dir or adapter).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-") or "model"
