"""Model + LoRA construction for each backend: plain transformers/peft, or unsloth on CUDA."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from engine.errors import ConfigError

# What "all-linear" means for Llama-style models, for APIs that need explicit names (unsloth).
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class BackendChoice:
    """Which backend trains, and why (shown to the user)."""

    name: str
    reason: str


def is_unsloth_available() -> bool:
    """True when the unsloth package is installed (it is only importable with CUDA)."""
    return importlib.util.find_spec("unsloth") is not None


def choose_backend(setting: str, device: str) -> BackendChoice:
    """Resolve `backend.name` (auto | transformers | unsloth) for this machine."""
    cuda = device.startswith("cuda")
    if setting == "transformers":
        return BackendChoice("transformers", "backend.name = transformers")
    if setting == "unsloth":
        if not cuda:
            raise ConfigError("backend.name = unsloth needs a CUDA GPU and none is visible — use backend.name=auto")
        if not is_unsloth_available():
            raise ConfigError("backend.name = unsloth but the package is not installed — pip install 'loradeck[unsloth]'")
        return BackendChoice("unsloth", "backend.name = unsloth")
    if not cuda:
        return BackendChoice("transformers", "auto: no CUDA device, so the plain transformers + peft path")
    if not is_unsloth_available():
        return BackendChoice("transformers", "auto: unsloth is not installed (pip install 'loradeck[unsloth]')")
    return BackendChoice("unsloth", "auto: CUDA and unsloth are present")


def target_modules(config) -> str | list[str]:
    """peft's `target_modules`: the string "all-linear" or a list of module names."""
    modules = list(config.lora.target_modules)
    return "all-linear" if modules == ["all-linear"] else modules


def build_peft_model(config, device: str, backend: BackendChoice, progress, *, sharded: bool = False):
    """The base model wrapped with a trainable LoRA adapter — fresh, or `model.adapter` continued — and its
    tokenizer. `sharded`: FSDP will shard it over several processes (see `load_model`)."""
    if backend.name == "unsloth":
        if config.model.adapter:
            raise ConfigError("model.adapter (continue an adapter) runs on the transformers backend — set "
                              "backend.name=transformers")
        return _build_unsloth(config)
    from peft import LoraConfig, get_peft_model

    from engine.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(config.model.name, progress)
    model = load_model(config.model.name, load_in_4bit=config.model.load_in_4bit, dtype=config.model.dtype,
                       device=device, progress=progress, sharded=sharded)
    # Not peft's prepare_model_for_kbit_training under 4-bit: it upcasts embeddings, lm_head and norms to fp32 (on
    # an 8B model ~2 GB more weights and a 2.2× slower step). They stay in the compute dtype (RMSNorm computes in
    # fp32 internally anyway); checkpointing is switched on once it is decided (engine/train/memory.plan_step).
    model.config.use_cache = False
    if config.model.adapter:
        from engine.models.adapters import attach_adapter

        progress(f"continuing the adapter {config.model.adapter}")
        return attach_adapter(model, config.model.adapter, config.model.name, trainable=True), tokenizer
    lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=target_modules(config), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora), tokenizer


def _build_unsloth(config):
    # Kept identical to unsloth's documented API: FastLanguageModel.from_pretrained + get_peft_model.
    from unsloth import FastLanguageModel

    from engine.models.loading import resolve_model

    modules = target_modules(config)
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=resolve_model(config.model.name), max_seq_length=config.data.max_length,
        dtype=None if config.model.dtype == "auto" else config.model.dtype, load_in_4bit=config.model.load_in_4bit)
    model = FastLanguageModel.get_peft_model(
        model, r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=LLAMA_LINEAR_MODULES if modules == "all-linear" else modules, bias="none",
        use_gradient_checkpointing="unsloth" if config.train.gradient_checkpointing is not False else False,
        random_state=config.train.seed)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
