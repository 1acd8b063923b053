"""Backend choice, and the unsloth path through a test double at its boundary (no CUDA here)."""

import sys
import types

import pytest

from engine.models.backends import LLAMA_LINEAR_MODULES, build_peft_model, choose_backend
from engine.config import load_config
from engine.errors import ConfigError


def test_auto_takes_the_plain_path_without_cuda_and_says_why():
    choice = choose_backend("auto", "cpu")
    assert choice.name == "transformers" and "no CUDA" in choice.reason


def test_unsloth_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        choose_backend("unsloth", "cpu")


def test_auto_picks_unsloth_when_cuda_and_the_package_are_present(monkeypatch):
    monkeypatch.setattr("engine.models.backends.is_unsloth_available", lambda: True)
    assert choose_backend("auto", "cuda").name == "unsloth"
    monkeypatch.setattr("engine.models.backends.is_unsloth_available", lambda: False)
    choice = choose_backend("auto", "cuda")
    assert choice.name == "transformers" and "not installed" in choice.reason


def test_unsloth_path_calls_its_documented_api(monkeypatch):
    calls = {}

    class FakeTokenizer:
        pad_token = None
        eos_token = "</s>"

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            return "model", FakeTokenizer()

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return "peft-model"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.setattr("engine.models.loading.resolve_model", lambda name, progress=None: f"/cache/{name}")
    config = load_config(None, ["model.load_in_4bit=true", "lora.r=8", "data.max_length=2048"])
    model, tokenizer = build_peft_model(config, "cuda", choose_backend.__globals__["BackendChoice"]("unsloth", "t"),
                                        progress=None)
    assert model == "peft-model" and tokenizer.pad_token == "</s>"
    assert calls["from_pretrained"] == {"model_name": "/cache/smollm2-135m-instruct", "max_seq_length": 2048,
                                        "dtype": None, "load_in_4bit": True}
    assert calls["get_peft_model"]["r"] == 8
    assert calls["get_peft_model"]["target_modules"] == LLAMA_LINEAR_MODULES
    assert calls["get_peft_model"]["use_gradient_checkpointing"] == "unsloth", "auto: unsloth's own checkpointing"
    off = load_config(None, ["model.load_in_4bit=true", "train.gradient_checkpointing=false"])
    build_peft_model(off, "cuda", choose_backend.__globals__["BackendChoice"]("unsloth", "t"), progress=None)
    assert calls["get_peft_model"]["use_gradient_checkpointing"] is False


def test_qlora_keeps_embeddings_and_head_in_the_compute_dtype(tiny_model_dir):
    import torch

    from engine.config import load_config
    from engine.models.backends import build_peft_model, choose_backend

    config = load_config(None, [f"model.name={tiny_model_dir}", "model.load_in_4bit=true", "model.dtype=bfloat16",
                                "train.gradient_checkpointing=true"])
    model, _ = build_peft_model(config, "cpu", choose_backend("transformers", "cpu"), lambda message: None)
    base = model.get_base_model()
    assert base.get_input_embeddings().weight.dtype == torch.bfloat16, "no fp32 upcast of the embeddings"
    assert base.get_output_embeddings().weight.dtype == torch.bfloat16, "no fp32 upcast of lm_head"
    assert base.model.norm.weight.dtype == torch.bfloat16
    quantized = base.model.layers[0].self_attn.q_proj.base_layer.weight
    assert type(quantized).__name__ == "Params4bit" and quantized.dtype == torch.uint8
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n), "fp32 adapters"
    assert base.get_input_embeddings().weight.nbytes == base.get_input_embeddings().weight.numel() * 2


def test_qlora_for_fsdp_stores_the_4bit_weights_in_the_compute_dtype(tiny_model_dir):
    """FSDP shards floating-point storage only: the documented recipe stores NF4 in the compute dtype."""
    import torch

    from engine.config import load_config
    from engine.models.backends import build_peft_model, choose_backend

    config = load_config(None, [f"model.name={tiny_model_dir}", "model.load_in_4bit=true", "model.dtype=float32",
                                "distributed.strategy=fsdp", "distributed.processes=2"])
    model, _ = build_peft_model(config, "cpu", choose_backend("transformers", "cpu"), lambda message: None,
                                sharded=True)
    quantized = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert type(quantized).__name__ == "Params4bit" and quantized.dtype == torch.float32
    assert quantized.quant_state.dtype == torch.float32
