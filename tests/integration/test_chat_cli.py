"""The one-shot `loradeck chat` on the real bundled model and on adapters."""

import subprocess

import pytest

from tests.conftest import LORADECK, REPO


@pytest.mark.slow
def test_default_model_answers_offline(default_model_dir):
    result = subprocess.run(LORADECK + ["chat", "--prompt", "What is the capital of France?", "--max-new-tokens", "24"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def make_random_adapter(model_dir, out_dir, seed):
    """A LoRA adapter with non-zero B matrices, so it really changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return out_dir


def test_compare_prints_base_then_each_adapter_labelled(tiny_model_dir, tmp_path):
    first = make_random_adapter(tiny_model_dir, tmp_path / "first", seed=1)
    second = make_random_adapter(tiny_model_dir, tmp_path / "second", seed=2)
    result = subprocess.run(LORADECK + ["chat", "--base", str(tiny_model_dir), "--adapter", str(first),
                                        "--adapter", str(second), "--compare", "--prompt", "Hello",
                                        "--max-new-tokens", "12"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sections = result.stdout.split("── ")
    labels = [section.split(" ──")[0] for section in sections[1:]]
    assert labels == ["base", "first", "second"]
    answers = [section.split(" ──", 1)[1].strip() for section in sections[1:]]
    assert answers[0] != answers[1] and answers[1] != answers[2]


def test_chat_with_missing_adapter_is_one_line_error(tiny_model_dir, tmp_path):
    result = subprocess.run(LORADECK + ["chat", "--base", str(tiny_model_dir), "--adapter", str(tmp_path / "nope"),
                                        "--prompt", "hi"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no such folder" in result.stderr and "Traceback" not in result.stderr
