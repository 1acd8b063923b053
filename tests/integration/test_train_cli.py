"""`loradeck train` as a user runs it: detached or in the foreground, with stop/save/status and signals."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.run.events import read_events
from tests.conftest import LORADECK, REPO, SAMPLE_DATA

DEMO = str(SAMPLE_DATA / "configs" / "demo.toml")


def tiny_sets(model_dir, *extra):
    sets = [f"model.name={model_dir}", "model.dtype=float32", "data.max_length=128", "train.batch_size=2",
            "train.save_every=0",
            "train.eval_every=0", "probe.prompts=[]", *extra]
    return [arg for item in sets for arg in ("--set", item)]


def loradeck(*args, timeout=300):
    return subprocess.run(LORADECK + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout=120, interval=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out")


def steps_logged(run_dir):
    return [e for e in read_events(Path(run_dir) / "events.jsonl") if e["type"] == "step"]


def test_foreground_prints_progress_and_leaves_an_adapter(tiny_model_dir, tmp_path):
    result = loradeck("train", DEMO, "--foreground", "--run-dir", str(tmp_path / "run"),
                      *tiny_sets(tiny_model_dir, "train.max_steps=3"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert "{'loss'" not in result.stdout


def test_detached_run_obeys_save_then_stop_and_status_reports_it(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    started = loradeck("train", DEMO, "--run-dir", str(run_dir), *tiny_sets(tiny_model_dir, "train.max_steps=100000"))
    assert started.returncode == 0, started.stderr
    assert f"loradeck status {run_dir}" in started.stdout and f"loradeck stop {run_dir}" in started.stdout
    wait_for(lambda: len(steps_logged(run_dir)) >= 2)
    assert loradeck("save", str(run_dir)).returncode == 0
    wait_for(lambda: any(e["type"] == "checkpoint" and e["reason"] == "requested"
                         for e in read_events(run_dir / "events.jsonl")))
    stopped = loradeck("stop", str(run_dir), "--wait")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    status = json.loads(loradeck("status", str(run_dir), "--json").stdout)
    assert status["status"] == "stopped" and status["pid"] is None
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert loradeck("stop", str(run_dir)).returncode == 2  # nothing left to stop


def test_sigterm_saves_the_adapter_within_seconds(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    loradeck("train", DEMO, "--run-dir", str(run_dir), *tiny_sets(tiny_model_dir, "train.max_steps=100000"))
    wait_for(lambda: len(steps_logged(run_dir)) >= 1)
    pid = int((run_dir / "trainer.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    sent = time.time()
    wait_for(lambda: not (run_dir / "trainer.pid").exists(), timeout=30)
    assert time.time() - sent < 10
    finished = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "finished"][-1]
    assert finished["reason"] == "stopped" and "SIGTERM" in finished["message"]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_bad_config_and_bad_data_are_one_line_errors(tiny_model_dir, tmp_path):
    result = loradeck("train", DEMO, "--set", "lora.rank=4")
    assert result.returncode == 2 and "did you mean 'r'" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": \n')
    result = loradeck("train", DEMO, "--run-dir", str(tmp_path / "run"),
                      *tiny_sets(tiny_model_dir, f"data.path={bad}"))
    assert result.returncode != 0 or "started" in result.stdout
    # the detached trainer fails at data loading; the run directory says why in one line
    wait_for(lambda: any(e["type"] == "error" for e in read_events(tmp_path / "run" / "events.jsonl")))
    error = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "error"][-1]
    assert "bad.jsonl:2: invalid JSON" in error["message"]
    status = loradeck("status", str(tmp_path / "run"))
    assert "[failed]" in status.stdout and "bad.jsonl:2" in status.stdout
    assert "loading" not in (tmp_path / "run" / "trainer.log").read_text(), "refused before the model loads"
    result = loradeck("train", DEMO, "--run-dir", str(tmp_path / "dpo"), "--foreground",
                      *tiny_sets(tiny_model_dir, "train.method=dpo"))  # SFT rows are not preference pairs
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "needs preference pairs" in result.stderr
    assert "loading" not in result.stdout, "refused before any model is loaded"


def test_run_directories_that_cannot_be_made_or_saved_into_are_refused_in_one_line(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = loradeck("train", DEMO, "--runs-dir", str(blocker / "runs"), *tiny_sets(tiny_model_dir))
    assert result.returncode != 0 and "cannot create the run directory" in result.stderr
    assert "unexpected error" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    not_utf8 = os.fsencode(tmp_path) + b"/run-\xff"
    result = subprocess.run([*LORADECK, "train", DEMO, "--run-dir", not_utf8, *tiny_sets(tiny_model_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "not valid UTF-8" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(not_utf8), "nothing was created"


def test_resume_interrupted_while_copying_the_bundle_says_so_and_leaves_nothing(tiny_model_dir, tmp_path,
                                                                                monkeypatch, capsys):
    from engine.train import launcher
    from engine.train.run import run_training
    from tests.conftest import tiny_config
    from tui.cli.main import main

    assert run_training(tmp_path / "first", tiny_config(tiny_model_dir, "train.max_steps=1")) == 0
    copy = launcher.stage_bundle

    def interrupted_copy(bundle, run_dir):
        copy(bundle, run_dir)
        os.kill(os.getpid(), signal.SIGTERM)  # the SSH session closes mid-copy

    monkeypatch.setattr(launcher, "stage_bundle", interrupted_copy)
    target = tmp_path / "second"
    handler = signal.getsignal(signal.SIGTERM)
    code = main(["resume", str(tmp_path / "first" / "handoff"), "--run-dir", str(target), "--foreground"])
    error = capsys.readouterr().err
    assert code != 0 and "resume interrupted while copying the bundle" in error and not target.exists()
    assert signal.getsignal(signal.SIGTERM) == handler, "the CLI's own SIGTERM handling is restored"


@pytest.mark.parametrize("setting, message", [
    ("data.path=/nowhere/train.jsonl", "/nowhere/train.jsonl: no such file — check data.path"),
    ("data.eval_path=/nowhere/eval.jsonl", "/nowhere/eval.jsonl: no such file"),
    ("model.name=/nowhere/model", "model '/nowhere/model': no such folder"),
    ("model.adapter=/nowhere/adapter", "adapter '/nowhere/adapter': no such folder"),
    ("data.path=", "data.path is empty"),
])
def test_missing_inputs_are_refused_before_a_run_directory_or_trainer_exists(tmp_path, setting, message):
    for command in (["train", DEMO, "--run-dir", str(tmp_path / "run")], ["preflight", DEMO]):
        result = loradeck(*command, "--set", setting)
        assert result.returncode == 2 and result.stderr.startswith(f"loradeck: error: {message}"), result.stderr
        assert result.stderr.count("\n") == 1 and "loading" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()
