"""The session clock as a user meets it: `train --session`, `extend`, `resume` on "another machine", faults."""

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from engine.train.checkpoint import verify_checkpoint
from engine.run.events import read_events
from engine.run.history import RunHistory
from engine.run.status import summarize_run
from tests.integration.test_train_cli import DEMO, loradeck, steps_logged, tiny_sets, wait_for


def events_of(run_dir, kind):
    return [e for e in read_events(Path(run_dir) / "events.jsonl") if e["type"] == kind]


def load_bundle_adapter(bundle, model_dir):
    """A bundle is 'loadable' when plain PEFT puts its adapter on the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    verify_checkpoint(bundle)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(bundle))


def test_session_budget_stops_in_time_and_the_copied_bundle_resumes_at_the_next_step(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    started = loradeck("train", DEMO, "--run-dir", str(run_dir), "--session", "25s",
                       *tiny_sets(tiny_model_dir, "train.max_steps=100000", "train.log_every=20",
                                  "session.buffer=3s", "train.save_every=200"))
    assert started.returncode == 0, started.stderr
    wait_for(lambda: events_of(run_dir, "finished"), timeout=60, interval=0.5)
    finished = events_of(run_dir, "finished")[-1]
    deadline = events_of(run_dir, "deadline")[-1]
    assert finished["reason"] == "deadline" and deadline["stopping"] is True
    assert finished["ts"] <= deadline["deadline_at"], "the run must end before its deadline"
    saves = events_of(run_dir, "checkpoint")
    assert saves[0]["reason"] == "first" and saves[0]["step"] == 1 and saves[-1]["final"]
    status = loradeck("status", str(run_dir))
    assert "[deadline]" in status.stdout and "handoff" in status.stdout
    stopped_at = finished["step"]

    elsewhere = tmp_path / "other-machine"
    shutil.copytree(run_dir / "handoff", elsewhere / "handoff")
    described = loradeck("status", str(elsewhere / "handoff"))
    assert f"step       {stopped_at}/100000" in described.stdout and "complete" in described.stdout
    resumed_dir = tmp_path / "resumed"
    result = loradeck("--runs-dir", str(tmp_path), "resume", str(elsewhere / "handoff"), "--run-dir",
                      str(resumed_dir), "--set", f"train.max_steps={stopped_at + 3}", "--set", "train.log_every=1",
                      "--session", "10m")
    assert result.returncode == 0, result.stderr
    assert f"resumed at step {stopped_at + 1}" in result.stdout
    assert f"train.max_steps changed 100000 → {stopped_at + 3}" in result.stdout, "the schedule rule is printed"
    wait_for(lambda: events_of(resumed_dir, "finished"), timeout=60)
    assert [e["step"] for e in steps_logged(resumed_dir)][0] == stopped_at + 1
    assert events_of(resumed_dir, "finished")[-1]["reason"] == "completed"
    # the copy the run resumed from lives in the new run directory; the source was not touched
    assert (resumed_dir / "resumed-from" / "state.json").is_file()
    verify_checkpoint(elsewhere / "handoff")
    again = loradeck("resume", str(resumed_dir), "--run-dir", str(tmp_path / "again"), "--foreground",
                     "--set", f"train.max_steps={stopped_at + 4}")
    assert again.returncode == 0 and f"resumed at step {stopped_at + 4}" in again.stdout, again.stdout


def test_extend_moves_a_live_deadline_and_is_refused_without_a_clock(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    loradeck("train", DEMO, "--run-dir", str(run_dir), "--session", "5m",
             *tiny_sets(tiny_model_dir, "train.max_steps=100000", "train.log_every=50"))
    first = wait_for(lambda: events_of(run_dir, "deadline"))[0]
    result = loradeck("extend", str(run_dir), "1h")
    assert result.returncode == 0, result.stderr
    extended = wait_for(lambda: [e for e in events_of(run_dir, "deadline") if e.get("extended_by_s")])[0]
    assert extended["deadline_at"] == pytest.approx(first["deadline_at"] + 3600)
    assert "1h" in loradeck("status", str(run_dir)).stdout.split("session")[1].split("\n")[0]
    bad = loradeck("extend", str(run_dir), "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr and "Traceback" not in bad.stderr
    assert loradeck("stop", str(run_dir), "--wait").returncode == 0

    plain = tmp_path / "plain"
    loradeck("train", DEMO, "--run-dir", str(plain), *tiny_sets(tiny_model_dir, "train.max_steps=100000"))
    wait_for(lambda: steps_logged(plain))
    refused = loradeck("extend", str(plain), "30m")
    assert refused.returncode == 2 and "no session clock" in refused.stderr
    loradeck("stop", str(plain), "--wait")


def test_bad_bundles_and_past_deadlines_are_one_line_refusals_that_touch_nothing(tiny_model_dir, tmp_path):
    from engine.train.run import run_training
    from tests.conftest import tiny_config

    run_training(tmp_path / "run", tiny_config(tiny_model_dir, "train.max_steps=1"))
    partial = tmp_path / "partial"
    shutil.copytree(tmp_path / "run" / "handoff", partial)
    (partial / "adapter_model.safetensors").unlink()
    result = loradeck("resume", str(partial), "--run-dir", str(tmp_path / "never"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "adapter_model.safetensors is missing" in result.stderr and not (tmp_path / "never").exists()
    result = loradeck("resume", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no such folder" in result.stderr
    result = loradeck("train", DEMO, "--deadline", "2020-01-01T00:00", "--run-dir", str(tmp_path / "late"))
    assert result.returncode == 2 and "already past" in result.stderr and not (tmp_path / "late").exists()


FAULT_SETS = ["train.max_steps=100000", "train.save_every=1", "train.eval_every=3", "data.eval_split=0.3",
              "data.eval_path="]


@pytest.mark.parametrize("moment", ["random", "during-save", "during-eval"])
def test_sigterm_at_any_moment_leaves_a_loadable_bundle(tiny_model_dir, tmp_path, moment):
    rng = random.Random(hash(moment) & 0xFFFF)
    for trial in range(2):
        run_dir = tmp_path / f"trial-{trial}"
        loradeck("train", DEMO, "--run-dir", str(run_dir), "--session", "1h", *tiny_sets(tiny_model_dir, *FAULT_SETS))
        wait_for(lambda: steps_logged(run_dir))
        if moment == "random":
            time.sleep(rng.uniform(0, 1.5))
        elif moment == "during-save":
            # saves follow every step: land just after a checkpoint event, inside the next save or step
            seen = len(events_of(run_dir, "checkpoint"))
            wait_for(lambda: len(events_of(run_dir, "checkpoint")) > seen, interval=0.005)
            time.sleep(rng.uniform(0, 0.02))
        else:
            # a step event at an eval step is written just before that eval starts
            wait_for(lambda: [e for e in steps_logged(run_dir) if e["step"] % 3 == 0], interval=0.005)
        pid = int((run_dir / "trainer.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not (run_dir / "trainer.pid").exists(), timeout=60)
        finished = events_of(run_dir, "finished")[-1]
        assert finished["reason"] == "stopped", finished
        load_bundle_adapter(run_dir / "handoff", tiny_model_dir)
        assert json.loads((run_dir / "handoff" / "state.json").read_text())["global_step"] == finished["step"]


def test_sigkill_during_saves_keeps_the_previous_bundle_loadable(tiny_model_dir, tmp_path):
    rng = random.Random(3)
    for trial in range(3):
        run_dir = tmp_path / f"trial-{trial}"
        loradeck("train", DEMO, "--run-dir", str(run_dir), *tiny_sets(tiny_model_dir, *FAULT_SETS))
        wait_for(lambda: (run_dir / "handoff" / "state.json").is_file())
        time.sleep(rng.uniform(0, 0.5))
        os.kill(int((run_dir / "trainer.pid").read_text()), signal.SIGKILL)
        time.sleep(0.2)
        load_bundle_adapter(run_dir / "handoff", tiny_model_dir)
        # the CLI, the monitor and Home all see the killed run as lost, at once
        monitor, home = RunHistory(run_dir), RunHistory(run_dir, curves=False)
        monitor.poll()
        home.poll()
        assert summarize_run(run_dir).status == monitor.summary.status == home.summary.status == "lost"


def test_a_resumed_run_is_named_after_the_run_its_bundle_came_from(tmp_path):
    from tui.cli.runs import _source_name

    run = tmp_path / "runs" / "20261124-101010-my-run"
    (run / "handoff").mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    (run / "config.toml").write_text("")
    assert _source_name(run / "handoff", "data/demo_train.jsonl") == "my-run"
    assert _source_name(run, "data/demo_train.jsonl") == "my-run"
    loose = tmp_path / "kaggle-bundle"
    loose.mkdir()
    assert _source_name(loose, "data/demo_train.jsonl") == "kaggle-bundle"
    (tmp_path / "x" / "handoff").mkdir(parents=True)
    assert _source_name(tmp_path / "x" / "handoff", "data/demo_train.jsonl") == "demo_train"
