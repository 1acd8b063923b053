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


def fake_run_with_adapter(model_dir, run_dir, seed=3):
    """A run directory (config + events) whose adapter is a real random LoRA over `model_dir`."""
    import json
    import time

    import tomli_w

    from tests.conftest import SAMPLE_DATA

    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps({
        "model": {"name": str(model_dir)},
        "data": {"path": str(SAMPLE_DATA / "demo_train.jsonl"), "eval_path": str(SAMPLE_DATA / "demo_heldout.jsonl")}}))
    (run_dir / "events.jsonl").write_text(json.dumps({"v": 1, "ts": time.time(), "type": "finished",
                                                      "reason": "completed", "step": 1}) + "\n")
    make_random_adapter(model_dir, run_dir / "adapter", seed=seed)
    return run_dir


def test_blind_cli_rates_from_stdin_reveals_and_saves_into_the_run(chatty_model_dir, tmp_path):
    import json

    run_dir = fake_run_with_adapter(chatty_model_dir, tmp_path / "runs" / "tuned")
    result = subprocess.run(LORADECK + ["chat", "--adapter", str(run_dir), "--compare", "--blind", "--prompts",
                                        str(run_dir), "--limit", "4", "--max-new-tokens", "8"],
                            input="a\n?\nb\nt\n", cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("── A ──") == 4 and "━━ 1/4: What is the opposite of 'ancient'?" in out
    assert out.count("A was ") == 3, "each verdict reveals the sides; end of input stops before the 4th"
    assert out.count("which is better?") == 5, "an unknown key asks again"
    ratings = [json.loads(line) for line in (run_dir / "chat" / "ratings.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in ratings] == ["left", "right", "tie"]
    reveals = [line for line in out.splitlines() if line.startswith("A was ")]
    assert reveals == [f"A was {r['left_label']}, B was {r['right_label']}" for r in ratings]
    assert "which is better? [a] A  [b] B  [t] tie  [x] both bad  [s] skip  [q] quit: a\n" in out
    assert len((run_dir / "chat" / "preferences.jsonl").read_text().splitlines()) == 2
    assert "tuned wins" in out and "95% CI" in out and str(run_dir / "chat" / "preferences.jsonl") in out


def test_prompts_file_with_json_output_gives_every_model_for_every_prompt(chatty_model_dir, tmp_path):
    import json

    run_dir = fake_run_with_adapter(chatty_model_dir, tmp_path / "runs" / "tuned")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of Peru?\nWhat is the opposite of 'early'?\n")
    result = subprocess.run(LORADECK + ["chat", "--adapter", str(run_dir), "--compare", "--prompts", str(prompts),
                                        "--json", "--max-new-tokens", "8"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"][-1]["content"] for r in rows] == prompts.read_text().splitlines()
    assert all(set(r["answers"]) == {"base", "tuned"} for r in rows)
    assert all(r["answers"]["base"] != r["answers"]["tuned"] for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--blind", "--prompt", "hi"], "compares exactly two models"),
    (["--prompts", "/nowhere/prompts.txt"], "no such file"),
    (["--prompt", "hi", "--top-p", "0"], "top-p must be in (0, 1]"),
])
def test_chat_cli_mistakes_are_one_line_errors(tiny_model_dir, args, message):
    result = subprocess.run(LORADECK + ["chat", "--base", str(tiny_model_dir), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr and "Traceback" not in result.stderr
