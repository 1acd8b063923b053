"""Following a run on another machine, through a stand-in for `ssh` that runs the remote command here: the mirror
holds exactly the run's events across a dropped connection, commands reach the remote trainer, and the CLI's
one-shot commands run over the same transport."""

import json
import subprocess
import sys
import time

import pytest

from engine.errors import RunError
from engine.run.mirror import read_remote
from engine.run.remote import RemoteFollower, connection_line, parse_remote
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


SSHD = "/usr/sbin/sshd"


@pytest.fixture
def sshd(tmp_path):
    """A throwaway sshd on a free localhost port that lets this user in with a fresh key, and puts this checkout's
    `loradeck` on the PATH of its sessions."""
    import getpass
    import os
    import shutil

    from tests.ports import free_port, wait_for_port

    if not os.path.exists(SSHD) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no sshd / ssh here (Debian: apt install openssh-server openssh-client)")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    port = free_port()
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
        f"PidFile {keys / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin yes\n"
        f"SetEnv PATH={os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder, absent in containers
    server = subprocess.Popen([SSHD, "-D", "-f", str(keys / "sshd_config"), "-E", str(keys / "sshd.log")])
    wait_for_port(port)
    command = (f"ssh -p {port} -i {keys / 'client'} -o BatchMode=yes -o StrictHostKeyChecking=no "
               f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
    try:
        yield f"{getpass.getuser()}@127.0.0.1", command
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_through_a_real_sshd_the_mirror_follows_and_commands_arrive(sshd, tmp_path):
    from engine.run.control import send_command

    host, ssh_command = sshd
    run_dir = live_run(tmp_path)
    append(run_dir, *({"type": "step", "step": s, "loss": 1.0, "max_steps": 10} for s in range(1, 4)))
    follower = RemoteFollower(host, str(run_dir), ssh_command=ssh_command, mirror=tmp_path / "mirror")
    mirror = follower.start(wait_s=60)
    try:
        wait_until(lambda: (mirror / "events.jsonl").read_bytes() == (run_dir / "events.jsonl").read_bytes())
        send_command(mirror, "stop")
        wait_until(lambda: any(json.loads(p.read_text())["command"] == "stop"
                               for p in (run_dir / "control").glob("*.json")), timeout=20)
    finally:
        follower.stop()


async def test_home_on_a_remote_runs_folder_lists_its_runs_live_and_new_runs_start_there(tmp_path):
    from textual.widgets import DataTable

    from engine.run.remote import RemoteRunsFolder
    from tests.tui.pilot_helpers import wait_until as pilot_wait
    from tui.app import LoradeckApp
    from tui.screens.monitor import MonitorScreen
    from tui.screens.new_run import NewRunScreen

    first, second = live_run(tmp_path, "first"), live_run(tmp_path, "second")
    append(first, {"type": "step", "step": 7, "loss": 1.2, "max_steps": 50})
    folder = RemoteRunsFolder("gpu-box", str(tmp_path / "runs"), ssh_command=FAKE_SSH, every_s=0.5)
    folder.root = tmp_path / "mirrors"  # a test's own place instead of ~/.cache
    try:
        app = LoradeckApp(runs_dir=folder.start())
        async with app.run_test(size=(120, 36), notifications=True) as pilot:
            table = app.screen.query_one("#runs-table", DataTable)

            def rows() -> list[str]:
                app.screen.action_refresh_runs()
                return [" ".join(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]

            await pilot_wait(pilot, lambda: len(rows()) == 2 and any("7/100" in row for row in rows()), timeout=30)
            assert all("running" in row for row in rows()), "the remote trainers are alive"
            live_run(tmp_path, "third")  # started on the remote machine meanwhile
            await pilot_wait(pilot, lambda: len(rows()) == 3, timeout=30)
            await pilot.press("n")
            await pilot.pause(0.2)
            assert not isinstance(app.screen, NewRunScreen), "new runs start on the machine that trains"
            await pilot.press("enter")
            await pilot_wait(pilot, lambda: isinstance(app.screen, MonitorScreen), timeout=10)
    finally:
        folder.stop()
