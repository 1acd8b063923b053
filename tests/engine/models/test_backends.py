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
