"""One typed config model, from TOML file or form to checkpoint.

`RunConfig` has one dataclass per TOML section. Every field carries its help
text and constraints in `metadata`, so the same description drives validation,
`--set` parsing, the README's reference table and the TUI's new-run form.
Unknown keys are errors that name the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from engine.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"

DATA_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text", "preference")


def spec(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
         maximum: float | None = None, check: str | None = None) -> Any:
    """Declare a config field with its help text and constraints."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "check": check}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSection:
    name: str = spec(DEFAULT_MODEL, "Base model: the bundled alias, a local HF folder, or a hub id.")
    load_in_4bit: bool = spec(False, "QLoRA: load the base in 4-bit NF4 (bitsandbytes, double quant). Saves ~70% weight memory, slower steps.")
    dtype: str = spec("auto", "Weights/compute dtype. auto = bf16 where the device computes it natively, else fp32.",
                      choices=("auto", "float32", "bfloat16", "float16"))
    adapter: str = spec("", "Continue training an existing adapter (a run directory, checkpoint, handoff bundle or "
                            "PEFT folder) instead of a fresh LoRA; its rank and target modules replace [lora]'s.")


@dataclass
class LoraSection:
    r: int = spec(16, "LoRA rank. Higher learns more, costs more memory and adapter size.", minimum=1, maximum=1024)
    alpha: int = spec(32, "LoRA scaling numerator (effective scale alpha/r).", minimum=1)
    dropout: float = spec(0.05, "Dropout on the LoRA branch.", minimum=0.0, maximum=0.9)
    target_modules: list[str] = spec(["all-linear"], "Modules to adapt: [\"all-linear\"] or names such as q_proj, v_proj.")


@dataclass
class DataSection:
    path: str = spec("", "Training data: a .json/.jsonl/.csv/.parquet file or a datasets.save_to_disk folder.")
    format: str = spec("auto", "Data format; auto detects it from the columns.", choices=DATA_FORMATS)
    eval_path: str = spec("", "Optional held-out file; when empty, eval_split carves one from `path`.")
    eval_split: float = spec(0.1, "Fraction of rows held out for eval loss (0 turns eval off).", minimum=0.0, maximum=0.5)
    max_length: int = spec(1024, "Tokens per sample after the chat template; longer samples are truncated. Memory grows with it.",
                           minimum=16, maximum=1_048_576)
    train_on: str = spec("completions", "Which tokens carry loss: completions (assistant turns) or all.",
                         choices=("completions", "all"))
    system_prompt: str = spec("", "System message added to samples that have none (empty: none added).")


@dataclass
class TrainSection:
    epochs: float = spec(1.0, "Passes over the training data (ignored when max_steps > 0).", minimum=0.0)
    max_steps: int = spec(-1, "Stop after this many optimizer steps; -1 uses epochs.", minimum=-1)
    learning_rate: float = spec(2e-4, "Peak learning rate.", minimum=0.0, maximum=1.0)
    lr_scheduler: str = spec("cosine", "Learning-rate schedule.", choices=("cosine", "linear", "constant", "constant_with_warmup"))
    warmup_steps: int = spec(0, "Linear warmup steps.", minimum=0)
    batch_size: int = spec(4, "Samples per device per step. Memory grows with it.", minimum=1)
    grad_accum: int = spec(1, "Micro-batches accumulated per optimizer step (bigger effective batch, same memory).", minimum=1)
    weight_decay: float = spec(0.0, "AdamW weight decay.", minimum=0.0)
    max_grad_norm: float = spec(1.0, "Gradient clipping norm (0 turns clipping off).", minimum=0.0)
    gradient_checkpointing: bool | str = spec(
        "auto", "Recompute activations in backward: ~30% slower, far less activation memory. auto: on when the "
                "preflight's estimate says a step would not fit on this device without it.",
        choices=("auto", True, False))
    seed: int = spec(42, "Seed for LoRA init and data order.", minimum=0, maximum=2**32 - 1)
    save_every: int = spec(50, "Checkpoint every N steps (0: only at the end).", minimum=0)
    keep_checkpoints: int = spec(0, "Keep only the newest N checkpoints, deleting older ones after each save "
                                    "(0: keep all). The handoff bundle is never pruned.", minimum=0)
    eval_every: int = spec(50, "Eval loss every N steps (0: only at the end).", minimum=0)
    log_every: int = spec(1, "Write a step event every N steps.", minimum=1)
    group_by_length: bool = spec(True, "Batch rows of similar length together: less padding, faster steps; "
                                       "every row still once per epoch, in an order fixed by the seed.")
    packing: str = spec("auto", "Lay each micro-batch's rows end to end with no padding, each row attending only "
                                "to itself (checked on the model before training). auto: on with a CUDA GPU.",
                        choices=("auto", "on", "off"))
    tokens_per_batch: int = spec(0, "With packing: fill each micro-batch with rows up to this many tokens instead of "
                                    "batch_size rows (steady memory, big GPU batches). 0: batch_size rows.",
                                 minimum=0)
    report_to: list[str] = spec([], "Extra loggers passed through to TRL, e.g. [\"tensorboard\"].")
    method: str = spec("sft", "sft: learn the answers (any data format). dpo: preference optimisation on "
                              "prompt/chosen/rejected pairs (TRL's DPOTrainer), usually with model.adapter set to "
                              "the SFT run; the reference is the starting adapter, frozen.", choices=("sft", "dpo"))
    dpo_beta: float = spec(0.1, "DPO: how far the policy may move from the reference (higher: stays closer).",
                           minimum=0.0, maximum=10.0)
    dpo_loss: str = spec("sigmoid", "DPO loss: sigmoid (the paper's), ipo, hinge or robust.",
                         choices=("sigmoid", "ipo", "hinge", "robust"))


@dataclass
class SessionSection:
    budget: str = spec("", "Session length, e.g. \"9h30m\" or \"120s\". Empty: no clock.", check="duration")
    preset: str = spec("", "Free-tier preset that sets the budget.", choices=("", "kaggle", "colab"))
    deadline: str = spec("", "Absolute deadline, ISO 8601 (\"2026-11-24T03:00\", local time unless an offset is given).",
                         check="datetime")
    start: str = spec("process", "Where the budget counts from: process start, or auto (container start).",
                      choices=("process", "auto"))
    buffer: str = spec("60s", "Extra safety margin kept on top of the slowest step plus a save.", check="duration")
    warn_at: list[str] = spec(["30m", "10m", "2m"], "Time-left thresholds that raise a warning (and the TUI bell).",
                              check="duration")
    with_optimizer: bool = spec(False, "Put optimizer and RNG state in the handoff bundle (bigger, exact resume).")


@dataclass
class DistributedSection:
    processes: int = spec(1, "Training processes (DistributedDataParallel through accelerate; one per GPU). 0: one "
                             "per visible GPU. On a CPU, processes share its cores (gloo): useful for tests.",
                          minimum=0, maximum=64)
    strategy: str = spec("ddp", "How several processes share the model: ddp (each GPU holds the whole model; fastest "
                                "when it fits) or fsdp (every GPU holds 1/N of the weights: a model too big for one "
                                "GPU; CUDA only).", choices=("ddp", "fsdp"))


@dataclass
class BackendSection:
    name: str = spec("auto", "Training backend: auto uses unsloth when CUDA and the package are present.",
                     choices=("auto", "transformers", "unsloth"))


@dataclass
class ProbeSection:
    prompts: list[str] = spec([], "Prompts answered with the current adapter at every checkpoint (sample events).")
    max_new_tokens: int = spec(48, "Tokens generated per probe answer.", minimum=1, maximum=4096)


@dataclass
class EvalSection:
    format_regex: str = spec("", "The answer format, as a Python regex the whole answer must match (use (?s) to let . "
                                 "cross lines); `loradeck eval` reports the share that does.", check="regex")
    format_json_schema: str = spec("", "The answer format as a JSON Schema (inline JSON, or a .json file relative "
                                       "to the config); answers must parse as JSON and conform.", check="json_schema")
    answer_regex: str = spec("", "Where the answer sits in a reference, e.g. \"ANSWER: (.+)\" (the first group): "
                                 "correctness is that answer found in the model's output. Empty: the whole "
                                 "reference.", check="regex")
    max_new_tokens: int = spec(128, "Tokens generated per held-out prompt (greedy).", minimum=1, maximum=8192)
    limit: int = spec(0, "Evaluate only the first N held-out prompts (0: all).", minimum=0)
    batch_size: int = spec(64, "Answers generated per batched call (prompts × models, one base copy). Memory grows "
                               "with it.", minimum=1, maximum=4096)
    after_training: bool = spec(False, "Write the before/after report when training finishes (within the session "
                                       "clock: skipped with a warning when it would not fit).")


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    session: SessionSection = field(default_factory=SessionSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    backend: BackendSection = field(default_factory=BackendSection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain TOML-ready dicts, every key present."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = get_type_hints(RunConfig)


def section_fields(section: str) -> dict[str, dataclasses.Field]:
    """The fields of one config section, by key."""
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


# Names other tools (PEFT, TRL, Axolotl, LLaMA-Factory) use for our keys.
KEY_SYNONYMS = {
    "rank": "r", "lora_r": "r", "lora_rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "lora_target": "target_modules", "lora_target_modules": "target_modules",
    "lr": "learning_rate", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length", "sequence_len": "max_length",
    "cutoff_len": "max_length", "save_steps": "save_every", "eval_steps": "eval_every", "logging_steps": "log_every",
    "base_model": "name", "model_name_or_path": "name", "dataset": "path", "train_on_inputs": "train_on",
    "val_set_size": "eval_split", "warmup": "warmup_steps", "scheduler": "lr_scheduler",
}


def _nearest(word: str, options: list[str]) -> str:
    if KEY_SYNONYMS.get(word) in options:
        return f"did you mean '{KEY_SYNONYMS[word]}'?"
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if match:
        return f"did you mean '{match[0]}'?"
    return "valid: " + ", ".join(options)


MAX_DURATION_S = 366 * 86400  # no session, budget or extension is longer than a year
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "9h30m", "45m", "120s", "1d" or a bare number of seconds."""
    text = str(text).strip().lower()
    if not text:
        raise ValueError("empty duration")
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.match(text)
        if not match or not any(match.groups()):
            raise ValueError(f"'{text}' is not a duration (examples: 9h30m, 45m, 120s)") from None
        days, hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds):
        raise ValueError(f"'{text}' is not a finite duration (examples: 9h30m, 45m, 120s)")
    if seconds < 0:
        raise ValueError(f"'{text}' is negative")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"'{text}' is longer than {MAX_DURATION_S // 86400:.0f} days")
    return seconds


def format_bytes(count: float | None) -> str:
    """'1.2 GB', '512 MB' or '—'."""
    if count is None:
        return "—"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


def format_duration(seconds: float | None) -> str:
    """'2h05m', '4m09s', '12s' or '—' (the inverse of parse_duration, for people)."""
    if seconds is None:
        return "—"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def parse_datetime(text: str):
    """An aware datetime from ISO 8601 text; naive times are taken as local time."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{text}' is not an ISO date-time (example: 2026-11-24T03:00)") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment


def parse_json_schema(text: str) -> dict:
    """A JSON Schema from inline JSON text, checked against its metaschema (ValueError when it is not one)."""
    import jsonschema

    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos}) — give an inline schema or a .json file") from None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    except (TypeError, AttributeError):
        raise ValueError("not a valid JSON Schema: expected an object") from None
    return schema


def _coerce(value: Any, annotation: Any, *, from_text: bool) -> Any:
    """Convert a TOML value (or `--set` text) to the field's type, or raise ValueError."""
    origin = get_origin(annotation)
    if origin is list:
        (item_type,) = get_args(annotation)
        if from_text and isinstance(value, str):
            stripped = value.strip()
            if stripped.startswith("["):
                try:
                    value = tomllib.loads(f"v = {stripped}")["v"]
                except tomllib.TOMLDecodeError:
                    raise ValueError(f"'{value}' is not a TOML list (example: [\"q_proj\", \"v_proj\"])") from None
            else:
                value = [part.strip() for part in stripped.split(",") if part.strip()]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(item, item_type, from_text=from_text) for item in value]
    if annotation == bool | str:  # a switch that may also be "auto"
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return _coerce(value, bool, from_text=from_text)
        except ValueError:
            raise ValueError(f"expected true, false or \"auto\", got {value!r}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise ValueError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if from_text and isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"expected a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if from_text:
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {annotation!r}")


def _check_constraints(value: Any, meta: dict[str, Any]) -> None:
    values = value if isinstance(value, list) else [value]
    for item in values:
        if meta.get("choices") is not None and item not in meta["choices"]:
            shown = ", ".join(repr(c) for c in meta["choices"])
            raise ValueError(f"{item!r} is not one of {shown}")
        if meta.get("minimum") is not None and item < meta["minimum"]:
            raise ValueError(f"{item!r} is below the minimum {meta['minimum']}")
        if meta.get("maximum") is not None and item > meta["maximum"]:
            raise ValueError(f"{item!r} is above the maximum {meta['maximum']}")
        if meta.get("check") == "duration" and item != "":
            parse_duration(item)
        if meta.get("check") == "datetime" and item != "":
            parse_datetime(item)
        if meta.get("check") == "regex" and item != "":
            try:
                re.compile(item)
            except re.error as exc:
                raise ValueError(f"{item!r} is not a valid regular expression: {exc}") from None
        if meta.get("check") == "json_schema" and item != "" and not item.strip().endswith(".json"):
            parse_json_schema(item)


def set_value(config: RunConfig, dotted_key: str, raw: Any, *, from_text: bool, origin: str) -> None:
    """Validate and assign one value, `section.key`, naming `origin` in any error."""
    section, _, key = dotted_key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"{origin}: unknown section [{section}] — {_nearest(section, list(SECTIONS))}")
    fields = section_fields(section)
    if not key:
        raise ConfigError(f"{origin}: '{dotted_key}' needs a key, e.g. {section}.{next(iter(fields))}")
    if key not in fields:
        raise ConfigError(f"{origin}: unknown key [{section}] {key} — {_nearest(key, list(fields))}")
    annotation = get_type_hints(SECTIONS[section])[key]
    try:
        value = _coerce(raw, annotation, from_text=from_text)
        _check_constraints(value, fields[key].metadata)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {section}.{key}: {exc}") from None
    setattr(getattr(config, section), key, value)


def config_from_dict(data: dict[str, Any], *, origin: str) -> RunConfig:
    """Build a validated RunConfig from nested dicts (a parsed TOML document)."""
    config = RunConfig()
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section [{section}] — {_nearest(section, list(SECTIONS))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: '{section}' must be a [{section}] table, got {values!r}")
        for key, raw in values.items():
            set_value(config, f"{section}.{key}", raw, from_text=False, origin=origin)
    check_config(config, origin=origin)
    return config


def check_config(config: RunConfig, *, origin: str) -> None:
    """Cross-field rules that a single field cannot express."""
    if config.session.budget and config.session.deadline:
        raise ConfigError(f"{origin}: session.budget and session.deadline are both set — keep one")
    if config.train.max_steps == 0:
        raise ConfigError(f"{origin}: train.max_steps = 0 would train nothing — use -1 (epochs) or a positive number")
    if config.train.max_steps < 0 and config.train.epochs <= 0:
        raise ConfigError(f"{origin}: train.epochs must be positive when train.max_steps is -1")
    if config.distributed.processes != 1 and config.train.tokens_per_batch:
        raise ConfigError(f"{origin}: train.tokens_per_batch plans batches for one process — set it to 0 with "
                          "distributed.processes other than 1")
    if config.distributed.strategy == "fsdp":
        if config.distributed.processes == 1:
            raise ConfigError(f"{origin}: distributed.strategy = \"fsdp\" shards the model over several processes — "
                              "set distributed.processes to 2 or more (0: every visible GPU)")
        if config.session.with_optimizer:
            raise ConfigError(f"{origin}: session.with_optimizer keeps the optimizer state, which FSDP shards over "
                              "the GPUs — set it to false (bundles resume with a fresh optimizer and the same schedule)")
        if config.backend.name == "unsloth":
            raise ConfigError(f"{origin}: unsloth trains on one GPU — use backend.name=auto or transformers with "
                              "distributed.strategy = \"fsdp\"")
    if config.train.method == "dpo" and (config.train.packing == "on" or config.train.tokens_per_batch):
        raise ConfigError(f"{origin}: train.packing = \"on\" and train.tokens_per_batch are for SFT — DPO batches "
                          "are padded pairs; set train.packing=auto and train.tokens_per_batch=0")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML config (or start from defaults when `path` is None) and apply `section.key=value` overrides.

    Relative `data.path` / `data.eval_path` (and an `eval.format_json_schema` .json file) are resolved against the
    config file's folder.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found — pass a .toml file, e.g. sample_data/configs/demo.toml")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text — save the config as UTF-8 TOML") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    config = config_from_dict(data, origin=origin)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"--set {override}: expected section.key=value, e.g. --set train.max_steps=10")
        set_value(config, key.strip(), value, from_text=True, origin=f"--set {override}")
    check_config(config, origin=origin if not overrides else f"{origin} with --set")
    if path is not None:
        base = Path(path).resolve().parent
        for section, key, value in _file_fields(config):
            if not Path(value).is_absolute() and (base / value).exists():
                setattr(getattr(config, section), key, str((base / value).resolve()))
    return config


FILE_FIELDS = (("data", "path"), ("data", "eval_path"), ("eval", "format_json_schema"),  # paths to files
               ("model", "adapter"))


def _file_fields(config: RunConfig):
    """(section, key, value) of each field that names a file and is set (an inline JSON schema is not a path)."""
    for section, key in FILE_FIELDS:
        value = getattr(getattr(config, section), key)
        if not value or (key == "format_json_schema" and not value.strip().endswith(".json")):
            continue
        yield section, key, value


def dumps_config(config: RunConfig) -> str:
    """The config as TOML text (tomli-w), every key written out."""
    import tomli_w

    return tomli_w.dumps(config.to_dict())


def save_config(config: RunConfig, path: str | Path, *, portable_paths: bool = False) -> None:
    """Write the config as TOML, atomically (temp file + rename). With `portable_paths` (a config a person saves
    to reuse), its file paths are written relative to the saved file's folder — where `load_config` resolves
    them — so it loads from any working directory; a run's own config.toml keeps them as they are."""
    import copy

    path = Path(path)
    portable = copy.deepcopy(config)
    folder = path.resolve().parent
    for section, key, value in _file_fields(portable) if portable_paths else ():
        if Path(value).exists():  # as the form meant it: relative to the working directory
            setattr(getattr(portable, section), key, os.path.relpath(Path(value).resolve(), folder))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps_config(portable), encoding="utf-8")
    tmp.replace(path)


def config_reference() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, help) for every field: the README's config reference."""
    rows = []
    defaults = RunConfig()
    for section in SECTIONS:
        for key, f in section_fields(section).items():
            rows.append((section, key, getattr(getattr(defaults, section), key), f.metadata["help"]))
    return rows


def config_reference_markdown() -> str:
    """The config reference as a Markdown table (pasted into the README; a test keeps them in sync)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, key, default, help_text in config_reference():
        shown = json.dumps(default) if not isinstance(default, str) or default else '""'
        lines.append(f"| `{section}.{key}` | `{shown}` | {help_text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference_markdown())
