"""The control channel refuses bad commands at both ends, and no file in control/ can stop or hang a trainer."""

import json
import os
import time

import pytest

from engine.config import parse_duration
from engine.errors import RunError
from engine.run.control import check_command, send_command, take_commands
from engine.run.events import read_events
from engine.run.paths import RunPaths
from engine.train.run import run_training
from tests.conftest import tiny_config


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "1e400", "400d"])
def test_durations_are_finite_and_bounded(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("payload", [
    {"command": "extend", "seconds": float("inf")}, {"command": "extend", "seconds": float("nan")},
    {"command": "extend", "seconds": "abc"}, {"command": "extend", "seconds": True}, {"command": "extend"},
    {"command": "extend", "seconds": -5}, {"command": "rm -rf"}, [1, 2], "stop", None])
def test_malformed_commands_are_refused_with_a_reason(payload):
    with pytest.raises(ValueError):
        check_command(payload)


def test_valid_commands_pass():
    assert check_command({"command": "extend", "seconds": 1800})["seconds"] == 1800
    assert check_command({"command": "stop"}) == {"command": "stop"}


def test_the_sender_refuses_before_writing(tmp_path):
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    (run / "config.toml").write_text("")
    (run / "trainer.pid").write_text(str(os.getpid()))
    with pytest.raises(RunError, match="positive, finite"):
        send_command(run, "extend", seconds=float("inf"))
    assert list((run / "control").iterdir()) == []


def test_odd_files_in_control_are_refused_without_blocking(tmp_path):
    paths = RunPaths(tmp_path)
    paths.control.mkdir()
    (paths.control / "1-stop.json").write_text(json.dumps({"command": "stop"}))
    (paths.control / "2-extend.json").write_text('{"command": "extend", "seconds": Infinity}')
    (paths.control / "3-extend.json").write_text(json.dumps({"command": "extend", "seconds": "abc"}))
    os.mkfifo(paths.control / "4-fifo.json")
    os.symlink("/dev/zero", paths.control / "5-zero.json")
    (paths.control / "6-dir.json").mkdir()
    (paths.control / "7-huge.json").write_text(json.dumps({"command": "stop", "pad": "x" * 100_000}))
    started = time.monotonic()
    commands, refused = take_commands(paths)
    assert time.monotonic() - started < 2
    assert commands == [{"command": "stop"}]
    assert len(refused) == 6 and all(reason.startswith("control/") for reason in refused)
    assert list(paths.control.iterdir()) == []


def test_a_bad_extend_is_a_warning_and_the_run_goes_on(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"

    def drop_bad_commands(event):
        if event["step"] == 1:
            control = run_dir / "control"
            (control / "a.json").write_text('{"command": "extend", "seconds": NaN}')
            (control / "b.json").write_text('{"command": "extend", "seconds": "abc"}')
            os.mkfifo(control / "c.json")

    config = tiny_config(tiny_model_dir, "train.max_steps=4", "session.budget=1h")
    assert run_training(run_dir, config, on_step=drop_bad_commands) == 0
    events = read_events(run_dir / "events.jsonl")
    ignored = [e["message"] for e in events if e["type"] == "warning" and e.get("kind") == "control"]
    assert len(ignored) == 3 and all(m.startswith("command ignored: control/") for m in ignored)
    finished = [e for e in events if e["type"] == "finished"]
    assert finished and finished[0]["reason"] == "completed" and finished[0]["step"] == 4
    deadlines = [e["deadline_at"] for e in events if e["type"] == "deadline"]
    assert all(d == deadlines[0] for d in deadlines)  # nothing moved the deadline
