"""`loradeck export` on small models trained for real: the merged folder equals base + adapter, GGUF files load
back into transformers with the same tokens and answers, the Modelfile points at them, and bad input is refused
in one line before anything heavy runs."""

from __future__ import annotations

import json

import pytest

from engine.errors import ConfigError, ModelError
from engine.export.pipeline import run_export
from engine.export.plan import plan_export
from tests.conftest import LORADECK


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_the_whole_export_merged_gguf_and_modelfile(small_run, small_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    plan = plan_export(small_run, out, gguf_types=["f16", "q8_0"], ollama="small-demo")
    stages = []
    result = run_export(plan, lambda stage, fraction, message: stages.append(stage))
    assert list(dict.fromkeys(stages)) == ["merge", "check merged", "gguf f16", "check f16", "gguf q8_0",
                                           "check q8_0", "modelfile", "report"]
    assert not result.failed, result.checks
    names = sorted(p.name for p in out.iterdir())
    assert names == ["EXPORT.md", "Modelfile", "export.json", "merged", "small-f16.gguf", "small-q8_0.gguf"]

    # merged/ is a plain HF folder whose logits equal base + adapter through PEFT
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    assert tokenizer.chat_template and (out / "merged" / "generation_config.json").is_file()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(small_model_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, small_run / "adapter")
    assert torch.allclose(_logits(merged, ids), _logits(peft, ids), atol=1e-4)
    with peft.disable_adapter():
        assert (_logits(merged, ids) - _logits(peft, ids)).abs().max() > 1e-5, "the adapter changed the model"

    # the f16 GGUF: same tokens, logits within fp16 rounding, same greedy answers
    gguf_tokenizer = AutoTokenizer.from_pretrained(out, gguf_file="small-f16.gguf")
    assert gguf_tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                              add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"] == ids
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    gguf_model = AutoModelForCausalLM.from_pretrained(out, gguf_file="small-f16.gguf", dtype=torch.float32)
    assert (_logits(gguf_model, ids) - _logits(merged, ids)).abs().max() < 1e-2
    checks = {check["file"]: check for check in result.checks}
    assert checks["small-f16.gguf"]["same_answers"] == checks["small-f16.gguf"]["answers"] == 4
    assert checks["small-q8_0.gguf"]["tokenizer_same_ids"] and checks["small-q8_0.gguf"]["max_abs_logit_diff"] > 0

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./small-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    report = (out / "EXPORT.md").read_text()
    assert "ollama create small-demo -f" in report and "small-q8_0.gguf loaded back by transformers" in report
    summary = json.loads((out / "export.json").read_text())
    assert summary["passed"] and [f["path"] for f in summary["files"]][0] == "merged/"


def test_an_earlier_export_folder_is_replaced_but_a_foreign_folder_is_refused(small_run, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds other files"):
        plan_export(small_run, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_bad_choices_are_refused_before_any_model_loads(small_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no llama-quantize
    with pytest.raises(ModelError, match="llama-quantize"):
        plan_export(small_run, tmp_path / "a", gguf_types=["q4_k_m"])
    with pytest.raises(ModelError, match="unknown type"):
        plan_export(small_run, tmp_path / "a", gguf_types=["q3_x"])
    with pytest.raises(ConfigError, match="needs a GGUF"):
        plan_export(small_run, tmp_path / "a", ollama="name")
    with pytest.raises(ConfigError, match="Ollama model name"):
        plan_export(small_run, tmp_path / "a", gguf_types=["f16"], ollama="Bad Name!")
    import engine.run.space

    monkeypatch.setattr(engine.run.space, "free_bytes", lambda folder: 1000)  # the disk is the boundary
    with pytest.raises(ModelError, match="not enough disk"):
        plan_export(small_run, tmp_path / "a", gguf_types=["f16"])
    assert not (tmp_path / "a").exists()


def test_an_adapter_for_another_base_is_refused_in_one_line(small_run, tmp_path, tiny_model_dir):
    plan = plan_export(small_run, tmp_path / "x", base=str(tiny_model_dir))
    with pytest.raises(ModelError, match="trained on|does not fit"):
        run_export(plan)


def test_a_qlora_run_merges_into_full_precision_weights(small_model_dir, tmp_path):
    from engine.train.run import run_training
    from tests.conftest import tiny_config

    run_dir = tmp_path / "runs" / "qlora"
    assert run_training(run_dir, tiny_config(small_model_dir, "train.max_steps=2", "model.load_in_4bit=true")) == 0
    plan = plan_export(run_dir, tmp_path / "out", dtype="fp32")
    assert plan.trained_4bit
    result = run_export(plan)
    assert not result.failed, result.checks
    config = json.loads((tmp_path / "out" / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert "4-bit" in (tmp_path / "out" / "EXPORT.md").read_text() and result.notes


def test_cli_errors_are_one_line_with_a_non_zero_exit(small_run, tmp_path):
    import subprocess

    done = subprocess.run([*LORADECK, "export", str(small_run), "--out", str(tmp_path / "o"), "--gguf", "f8"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "unknown type" in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()


def test_k_quants_go_through_llama_quantize_when_it_is_on_path(small_run, tmp_path, monkeypatch):
    """llama.cpp's quantizer is an outside program (the boundary): a stand-in that copies its input proves the
    plumbing — the f16 file it reads is made and removed again, the result is named and checked like any GGUF —
    and a failing one is reported in one line."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "llama-quantize"
    tool.write_text('#!/bin/sh\n[ "$3" = "Q4_K_M" ] || exit 3\ncp "$1" "$2"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    plan = plan_export(small_run, tmp_path / "out", gguf_types=["q4_k_m"], ollama="small")
    result = run_export(plan)
    assert not result.failed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.gguf")) == ["small-q4_k_m.gguf"], "helper f16 removed"
    assert (tmp_path / "out" / "Modelfile").read_text().startswith("FROM ./small-q4_k_m.gguf")

    tool.write_text("#!/bin/sh\necho 'llama_model_quantize: failed to quantize: bad magic' >&2\nexit 1\n")
    with pytest.raises(ModelError, match="llama-quantize Q4_K_M failed: llama_model_quantize: failed"):
        run_export(plan_export(small_run, tmp_path / "out2", gguf_types=["q4_k_m"]))
