"""One rule for a run's liveness and one for where its recorded data lives, shared by the CLI and the TUI."""

import json
import os
import subprocess
import sys
import time

import pytest

from engine.data.prompts import held_out_prompts
from engine.run.history import RunHistory
from engine.run.paths import recorded_data_path, run_data_path
from engine.run.status import STARTUP_GRACE_S, run_duration, session_time_left, summarize_run


def write_run(run_dir, events, pid=None, config="[model]\nname = \"tiny\"\n"):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config)
    if events is not None:
        (run_dir / "events.jsonl").write_text("".join(json.dumps({"v": 1, "ts": time.time(), **e}) + "\n"
                                                      for e in events))
    if pid is not None:
        (run_dir / "trainer.pid").write_text(str(pid))
    return run_dir


def dead_pid() -> int:
    """The pid of a process that was just SIGKILLed (its pid file would be left behind)."""
    process = subprocess.Popen(["sleep", "30"])
    process.kill()
    process.wait()
    return process.pid


STARTED = [{"type": "started", "pid": 1}, {"type": "step", "step": 4, "loss": 1.0, "max_steps": 200}]


def test_a_sigkilled_trainer_is_lost_for_the_cli_and_the_monitor_alike(tmp_path):
    run = write_run(tmp_path / "killed", STARTED, pid=dead_pid())
    history = RunHistory(run)
    history.poll()
    assert summarize_run(run).status == "lost"
    assert history.summary.status == "lost"
    assert "gone" in history.summary.message


def test_a_live_trainer_is_running_for_both(tmp_path):
    run = write_run(tmp_path / "live", STARTED, pid=os.getpid())
    history = RunHistory(run)
    history.poll()
    assert summarize_run(run).status == history.summary.status == "running"
    assert history.summary.pid == os.getpid()


def test_a_run_prepared_moments_ago_is_starting_and_one_never_started_is_lost(tmp_path):
    fresh = write_run(tmp_path / "fresh", None)
    assert summarize_run(fresh).status == "starting"
    stale = write_run(tmp_path / "stale", [])
    old = time.time() - STARTUP_GRACE_S - 5
    os.utime(stale / "config.toml", (old, old))
    history = RunHistory(stale)
    history.poll()
    assert summarize_run(stale).status == history.summary.status == "lost"


def test_a_finished_run_without_a_trainer_stays_finished(tmp_path):
    run = write_run(tmp_path / "done", STARTED + [{"type": "finished", "reason": "completed", "step": 4,
                                                  "message": "trained 4 steps"}])
    history = RunHistory(run)
    history.poll()
    assert summarize_run(run).status == history.summary.status == "finished"


def test_an_ended_run_reports_its_final_numbers_not_an_earlier_deadline_events(tmp_path):
    start = 1_000_000.0
    events = [{"type": "started", "pid": 1, "ts": start},
              {"type": "deadline", "deadline_at": start + 300, "time_left_s": 173, "ts": start + 127},
              {"type": "step", "step": 9, "loss": 1.0, "ts": start + 140},
              {"type": "finished", "reason": "completed", "step": 9, "ts": start + 149}]
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.toml").write_text("[model]\nname = \"tiny\"\n")
    (run / "events.jsonl").write_text("".join(json.dumps({"v": 1, **e}) + "\n" for e in events))
    history = RunHistory(run)
    history.poll()
    for summary in (summarize_run(run), history.summary):
        assert session_time_left(summary, now=start + 5000) == 151, "2m31s left when it finished, not 2m53s"
        assert run_duration(summary, now=start + 5000) == 149, "it ran until its final event"
    assert history.time_left(start + 5000) == 151
    status = subprocess.run([sys.executable, "-m", "tui.cli", "status", str(run)], capture_output=True, text=True)
    assert "session    2m31s left when it ended" in status.stdout and "ran        2m29s" in status.stdout, \
        status.stdout


@pytest.fixture
def data_run(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r1"
    (run / "data").mkdir(parents=True)
    (run / "data" / "train.jsonl").write_text(
        "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(20)))
    elsewhere = tmp_path / "cwd"
    (elsewhere / "sets").mkdir(parents=True)
    (elsewhere / "sets" / "eval.jsonl").write_text(json.dumps({"instruction": "held", "output": "out"}) + "\n")
    monkeypatch.chdir(elsewhere)
    return run


def test_recorded_data_paths_resolve_against_the_run_then_the_working_directory(data_run, tmp_path):
    write_run(data_run, [], config='[data]\npath = "data/train.jsonl"\neval_path = "sets/eval.jsonl"\n')
    assert recorded_data_path(data_run) == data_run / "data" / "train.jsonl"
    assert recorded_data_path(data_run, "eval_path").resolve() == (tmp_path / "cwd" / "sets" / "eval.jsonl")
    assert run_data_path(data_run, str(data_run / "data" / "train.jsonl")) == data_run / "data" / "train.jsonl"
    assert run_data_path(data_run, "nowhere.jsonl") is None
    assert run_data_path(data_run, "") is None


def test_held_out_prompts_and_the_dataset_screen_find_the_same_file(data_run):
    write_run(data_run, [], config='[data]\npath = "data/train.jsonl"\neval_path = "sets/eval.jsonl"\n')
    assert [item.text for item in held_out_prompts(data_run)] == ["held"]
    write_run(data_run, [], config='[data]\npath = "data/train.jsonl"\neval_split = 0.25\n')
    assert len(held_out_prompts(data_run)) == 5  # a quarter of the 20 rows, found relative to the run


def test_an_unreadable_run_config_has_no_recorded_data(tmp_path):
    run = write_run(tmp_path / "bad", [], config="this is = = not toml")
    assert recorded_data_path(run) is None


HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom engine.run.paths import RunPaths\n"
          "from engine.run.status import hold_run_lock\n"
          "hold_run_lock(RunPaths(Path(sys.argv[1])))\nprint('held', flush=True)\ntime.sleep(120)\n")


def start_holder(run_dir):
    from tests.conftest import REPO

    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_lock_holder_is_running_and_lost_the_moment_it_is_sigkilled(tmp_path):
    run = write_run(tmp_path / "locked", STARTED)
    holder = start_holder(run)
    try:
        history = RunHistory(run)
        history.poll()
        assert summarize_run(run).status == history.summary.status == "running"
        assert history.summary.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert (run / "trainer.lock").read_text() == str(holder.pid)  # the lock file outlives SIGKILL …
    history.poll()
    assert summarize_run(run).status == history.summary.status == "lost"  # … its lock does not


def test_a_reused_pid_is_not_mistaken_for_the_trainer(tmp_path):
    run = write_run(tmp_path / "reused", STARTED, pid=os.getpid())  # a live process, but not the trainer
    (run / "trainer.lock").write_text(str(os.getpid()))  # nobody holds the lock
    history = RunHistory(run)
    history.poll()
    assert summarize_run(run).status == history.summary.status == "lost"


def test_a_second_trainer_on_a_held_run_directory_is_refused_and_writes_nothing(tmp_path, tiny_model_dir):
    from engine.train.run import run_training
    from tests.conftest import tiny_config

    run = tmp_path / "busy"
    run.mkdir()
    holder = start_holder(run)
    said = []
    try:
        code = run_training(run, tiny_config(tiny_model_dir), progress=said.append)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and "another trainer is running in this run directory" in said[0]
    assert not (run / "events.jsonl").exists() and not (run / "trainer.pid").exists()


def test_processes_that_exit_non_zero_are_explained_in_one_line_by_what_the_run_recorded(tmp_path):
    from engine.train.launcher import processes_exit_line

    failed = write_run(tmp_path / "failed", STARTED + [{"type": "error", "message": "rank 1 of 2 ended: boom"}])
    assert processes_exit_line(failed, 1) == "rank 1 of 2 ended: boom"
    saved = write_run(tmp_path / "saved", STARTED + [{"type": "finished", "reason": "completed", "step": 4}])
    line = processes_exit_line(saved, 1)
    assert line.startswith("a training process exited with code 1 after the run ended (finished, step 4")
    assert str(saved / "adapter") in line and str(saved / "trainer.log") in line and "\n" not in line
    never = write_run(tmp_path / "never", None)
    assert processes_exit_line(never, 2) == (f"the training processes exited with code 2 before the run started; "
                                             f"their output is in {never / 'trainer.log'}")
