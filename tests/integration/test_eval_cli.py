"""`loradeck eval` as a user runs it: the table and the files from the real command, and one-line errors. The demo
config's own report on the bundled model ends tests/integration/test_tui_tmux.py's chat-and-rate story."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine.train.run import run_training
from tests.conftest import LORADECK, REPO, SAMPLE_DATA, tiny_config


@pytest.fixture(scope="module")
def tiny_run(chatty_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    assert run_training(run_dir, tiny_config(chatty_model_dir, "eval.max_new_tokens=6")) == 0
    return run_dir


def test_eval_prints_the_before_after_table_and_writes_the_report(tiny_run):
    result = subprocess.run(LORADECK + ["eval", str(tiny_run), "--limit", "5"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "base vs tiny" in out and "held-out loss" in out and "format conformance" in out and "W/L/T" in out
    assert "5 held-out prompts from" in out and "blind A/B rating (the quality signal)" in out
    report_md = next(line.split("report: ", 1)[1] for line in out.splitlines() if line.startswith("report: "))
    assert (tiny_run / "eval") in Path(report_md).parents
    assert "evaluating 1 adapter and the base on 5 prompts" in result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, "library noise stays in the log"

    report = json.loads((Path(report_md).parent / "report.json").read_text())
    assert report["prompts"] == 5 and set(report["models"]) == {"base", "tiny"}
    assert set(report["models"]["tiny"]["metrics"]) >= {"exact_match", "token_f1", "rouge_l", "chrf", "format"}


@pytest.mark.parametrize("args, message", [
    (["/nowhere/run"], "no such run directory"),
    (["{run}", "--limit", "-1"], "--limit must be 0 (all) or more"),
    (["{run}", "--max-new-tokens", "0"], "--max-new-tokens must be 1–8192"),
    (["{run}", "--prompts", "/nowhere/prompts.txt"], "no such file"),
    (["{run}", "--adapter", "/nowhere/adapter"], "no such folder"),
    ([str(SAMPLE_DATA / "runs" / "demo-finished")], "no adapter yet"),
])
def test_eval_mistakes_are_one_line_errors(tiny_run, args, message):
    result = subprocess.run(LORADECK + ["eval", *[a.format(run=tiny_run) for a in args]], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
