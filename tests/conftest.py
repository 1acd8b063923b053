"""Shared fixtures: offline hub, a tiny model with the real SmolLM2 tokenizer, paths."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# The TUI remembers its theme between launches: tests use a settings folder of their own, never the user's
# (and each test a fresh one, below, so a test that switches theme leaves nothing to the next).
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="loradeck-test-config-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
REAL_DATASETS = REPO.parent / "shared" / "datasets" / "real"
LORADECK = [sys.executable, "-m", "tui.cli"]


@pytest.fixture(autouse=True)
def fresh_tui_settings(tmp_path_factory, monkeypatch):
    """A settings folder per test: the theme one test picks is not the next test's starting theme."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


def real_dataset(name: str) -> Path:
    """A file from ../shared/datasets/real, or skip when the folder is absent (a user's own clone)."""
    path = REAL_DATASETS / name
    if not path.is_file():
        pytest.skip(f"real-world dataset {name} not present ({REAL_DATASETS} is absent outside the project's CI)")
    return path


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The bundled default model converted into the cache (converts once per machine, ~35 s)."""
    from engine.models.loading import resolve_model

    return Path(resolve_model("smollm2-135m-instruct", progress=lambda message: None))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A 2-layer, hidden-64 Llama with the real SmolLM2 tokenizer: a training step costs milliseconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(model_dir, *overrides: str):
    """A RunConfig training the tiny model on the demo data, fast: a step costs milliseconds.

    fp32 on every CPU, so no test depends on which CPU runs it (`model.dtype=auto` has tests of its own)."""
    from engine.config import load_config

    return load_config(SAMPLE_DATA / "configs" / "demo.toml", [
        f"model.name={model_dir}", "model.dtype=float32", "data.max_length=128", "train.batch_size=2", "train.max_steps=3",
        "train.save_every=0", "train.eval_every=0", "train.warmup_steps=0", "probe.prompts=[]",
        "train.learning_rate=1e-2", *overrides])


@pytest.fixture(scope="session")
def smollm_tokenizer(default_model_dir):
    """The real SmolLM2 tokenizer with its chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="session")
def chatty_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model fully fine-tuned for a few seconds on the demo answers, so greedy decoding emits visible
    text ("ANSWER: …") instead of the random model's newlines; chat tests need words to stream and compare."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (SAMPLE_DATA / "demo_train.jsonl").read_text().splitlines()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                            {"role": "assistant", "content": r["output"]}], tokenize=False)
             for r in rows]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        batch = tokenizer([texts[(step * 8 + i) % len(texts)] for i in range(8)], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("chatty-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """A tiny Llama with a 600-token byte-level tokenizer and SmolLM2's ChatML template."""
    from tests.small_models import byte_level_tokenizer, save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("small-model"), byte_level_tokenizer(smollm_tokenizer.chat_template))


@pytest.fixture(scope="session")
def small_run(small_model_dir, tmp_path_factory) -> Path:
    """A LoRA trained 3 steps on the demo data over the small model."""
    from engine.train.run import run_training

    run_dir = tmp_path_factory.mktemp("runs") / "small"
    assert run_training(run_dir, tiny_config(small_model_dir, "train.max_steps=3")) == 0
    return run_dir
