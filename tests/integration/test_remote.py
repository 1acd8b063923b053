"""Following a run on another machine, through a stand-in for `ssh` that runs the remote command here: the mirror
holds exactly the run's events across a dropped connection, commands reach the remote trainer, and the CLI's
one-shot commands run over the same transport."""

import json
import subprocess
import sys
import time

import pytest

from engine.errors import RunError
from engine.run.remote import RemoteFollower, connection_line, parse_remote, read_remote
from tests.conftest import REPO
from tests.integration.test_train_cli import LORADECK
from tests.tui.test_monitor import append, live_run

FAKE_SSH = f"{sys.executable} {REPO / 'tests' / 'fake_ssh.py'}"


def wait_until(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_remote_addresses_are_told_from_local_paths(tmp_path):
    assert parse_remote("me@gpu-box:runs/demo") == ("me@gpu-box", "runs/demo")
    assert parse_remote("gpu-box:/data/runs/x") == ("gpu-box", "/data/runs/x")
    assert parse_remote(str(tmp_path)) is None and parse_remote("runs/demo") is None
    assert parse_remote("./a:b") is None


def test_the_mirror_survives_a_dropped_connection_without_duplicates_and_commands_reach_the_run(tmp_path):
    from engine.run.control import send_command

    run_dir = live_run(tmp_path)
    append(run_dir, *({"type": "step", "step": s, "loss": 2.0 - s / 100, "max_steps": 100} for s in range(1, 6)))
    follower = RemoteFollower("gpu-box", str(run_dir), ssh_command=FAKE_SSH, mirror=tmp_path / "mirror")
    mirror = follower.start()
    try:
        source = run_dir / "events.jsonl"
        wait_until(lambda: (mirror / "events.jsonl").read_bytes() == source.read_bytes())
        assert read_remote(mirror)["state"] == "connected" and read_remote(mirror)["pid"] > 0

        follower.drop_connection()  # the network goes
        wait_until(lambda: read_remote(mirror)["state"] == "reconnecting", timeout=10)
        assert connection_line(mirror, time.time() - 42).startswith("reconnecting to gpu-box… (last event 42s")
        append(run_dir, *({"type": "step", "step": s, "loss": 1.9, "max_steps": 100} for s in range(6, 9)))
        wait_until(lambda: (mirror / "events.jsonl").read_bytes() == source.read_bytes(), timeout=30)
        assert follower.connections >= 2
        steps = [json.loads(line)["step"] for line in (mirror / "events.jsonl").read_text().splitlines()
                 if json.loads(line)["type"] == "step"]
        assert steps == list(range(1, 9)), "every event once, in order, across the reconnect"
        wait_until(lambda: read_remote(mirror)["state"] == "connected", timeout=10)
        assert connection_line(mirror, time.time()) is None

        send_command(mirror, "save")  # what the monitor's `s` does on a mirror
        wait_until(lambda: any(json.loads(p.read_text())["command"] == "save"
                               for p in (run_dir / "control").glob("*.json")), timeout=15)
    finally:
        follower.stop()


def test_a_remote_without_loradeck_is_one_line(tmp_path):
    missing = "sh -c 'echo \"bash: line 1: loradeck: command not found\" >&2; exit 127' --"
    follower = RemoteFollower("gpu-box", "/runs/x", ssh_command=missing, mirror=tmp_path / "mirror")
    with pytest.raises(RunError) as error:
        follower.start(wait_s=10)
    assert "loradeck is not installed there" in str(error.value) and "\n" not in str(error.value)


def test_status_save_and_stop_run_over_the_same_transport(tmp_path):
    run_dir = live_run(tmp_path)
    append(run_dir, {"type": "step", "step": 3, "loss": 1.5, "max_steps": 100})
    status = subprocess.run([*LORADECK, "status", f"gpu-box:{run_dir}", "--ssh-command", FAKE_SSH, "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and json.loads(status.stdout)["step"] == 3
    saved = subprocess.run([*LORADECK, "save", f"gpu-box:{run_dir}", "--ssh-command", FAKE_SSH], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0 and "save requested" in saved.stdout
    assert [json.loads(p.read_text())["command"] for p in (run_dir / "control").glob("*.json")] == ["save"]


async def test_the_monitor_on_a_mirror_shows_the_remote_run_and_its_s_reaches_the_trainer(tmp_path):
    from textual.widgets import Static

    from tests.tui.pilot_helpers import wait_until as pilot_wait
    from tui.app import LoradeckApp

    run_dir = live_run(tmp_path)
    (run_dir / "config.toml").write_text('[model]\nname = "remote-model"\n')
    append(run_dir, *({"type": "step", "step": s, "loss": 2.0 - s / 100, "max_steps": 100} for s in range(1, 13)))
    follower = RemoteFollower("gpu-box", str(run_dir), ssh_command=FAKE_SSH, mirror=tmp_path / "mirror")
    mirror = follower.start()
    try:
        app = LoradeckApp(runs_dir=mirror.parent, attach_to=mirror)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot_wait(pilot, lambda: len(app.screen.history.loss) == 12, timeout=30)
            line = str(app.screen.query_one("#progress-line", Static).render())
            assert "step 12/100" in line and "running" in line, "the remote trainer is alive"
            await pilot.press("s")
            await pilot_wait(pilot, lambda: any((run_dir / "control").glob("*.json")), timeout=15)
            follower.drop_connection()
            await pilot_wait(pilot, lambda: "reconnecting to gpu-box" in str(
                app.screen.query_one("#progress-line", Static).render()), timeout=10)
            append(run_dir, {"type": "step", "step": 13, "loss": 1.8, "max_steps": 100})
            await pilot_wait(pilot, lambda: len(app.screen.history.loss) == 13, timeout=30)
    finally:
        follower.stop()
    assert (mirror / "config.toml").read_text() == (run_dir / "config.toml").read_text()
