"""The real `loradeck` command in a real terminal (tmux): home screen, attach to a finished run, quit with q."""

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_DATA

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def loradeck_command() -> str:
    script = Path(sys.executable).with_name("loradeck")
    return str(script) if script.exists() else f"{sys.executable} -m tui.cli"


class Tmux:
    def __init__(self, command: str, width=100, height=30):
        self.name = f"loradeck-test-{uuid.uuid4().hex[:8]}"
        for _ in range(5):  # a tmux server still shutting down from the previous test refuses new sessions
            started = subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y",
                                      str(height), "-c", str(REPO),
                                      f"env TERM=xterm-256color HF_HUB_OFFLINE=1 {command}; sleep 30"],
                                     capture_output=True, text=True)
            if started.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"tmux would not start: {started.stderr}")

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True,
                              text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, *texts: str, timeout=30.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            screen = self.screen()
            if all(text in screen for text in texts):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"never saw {texts}; screen was:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def runs(tmp_path) -> Path:
    target = tmp_path / "runs"
    shutil.copytree(SAMPLE_DATA / "runs", target, ignore=shutil.ignore_patterns("*.py"))
    return target


def test_home_then_attach_then_quit_in_a_real_terminal(runs):
    tmux = Tmux(f"{loradeck_command()} --runs-dir {runs}")
    try:
        startup = tmux.wait_for("Runs", "demo-finished", "kaggle-deadline", "New run")
        assert startup < 5, f"home screen took {startup:.1f}s"
        time.sleep(1.0)  # the table takes focus once the first refresh has filled it
        for _ in range(2):  # rows are newest first: demo-finished is the oldest
            tmux.keys("Down")
            time.sleep(0.3)
        tmux.keys("Enter")
        tmux.wait_for("demo-finished", "step 96/96", "trained 96 steps", "events")
        screen = tmux.screen()
        assert "No session clock" in screen and "no GPU" in screen
        tmux.keys("Escape")
        tmux.wait_for("Runs", "New run")
        tmux.keys("q")
        time.sleep(1.0)
        assert "Runs" not in tmux.screen(), "q quits the TUI"
    finally:
        tmux.close()


def test_attach_command_opens_the_monitor_with_history_and_q_quits(runs):
    tmux = Tmux(f"{loradeck_command()} attach {runs / 't4-session'}", width=110, height=34)
    try:
        tmux.wait_for("t4-session", "step 24/30", "GPU0 Tesla T4", "ended with 2m43s left")
        tmux.keys("q")
        time.sleep(1.0)
        assert "GPU0" not in tmux.screen()
    finally:
        tmux.close()


def test_attach_to_a_missing_run_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tui.cli", "attach", str(tmp_path / "nope")], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such run directory" in result.stderr and "Traceback" not in result.stderr
