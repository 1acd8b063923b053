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
                                      f"env -u COLUMNS -u LINES TERM=xterm-256color HF_HUB_OFFLINE=1 {command}; sleep 600"],
                                     capture_output=True, text=True)
            if started.returncode == 0:
                # a running tmux server may size new detached windows by its default-size, not -x/-y
                subprocess.run(["tmux", "resize-window", "-t", self.name, "-x", str(width), "-y", str(height)],
                               capture_output=True)
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

    def wait_gone(self, text: str, timeout=10.0) -> None:
        started = time.monotonic()
        while text in self.screen():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{text!r} still on screen after {timeout}s:\n{self.screen()}")
            time.sleep(0.1)

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
        for _ in range(3):  # rows are newest first: demo-finished is the oldest of four
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


def test_at_80x24_home_shows_the_run_columns_and_the_monitor_its_curve_and_palette(runs):
    tmux = Tmux(f"{loradeck_command()} --runs-dir {runs}", width=80, height=24)
    try:
        tmux.wait_for("Runs", "demo-finished", "status", "step", "loss", "eval", "time left")
        assert "New run starts from" not in tmux.screen(), "the side panels step aside for the table"
        time.sleep(1.0)
        for _ in range(3):
            tmux.keys("Down")
            time.sleep(0.3)
        tmux.keys("Enter")
        tmux.wait_for("demo-finished", "loss · all steps", "events", "lr ")
        tmux.keys("C-p")
        tmux.wait_for("Search")
        tmux.keys("zoom")
        tmux.wait_for("Zoom", "key: z")
        tmux.keys("Enter")
        tmux.wait_for("loss · last 50 steps")
        tmux.keys("q")
        time.sleep(1.0)
        assert "events" not in tmux.screen(), "q quits the TUI"
    finally:
        tmux.close()


def test_attach_command_opens_the_monitor_with_history_and_q_quits(runs):
    tmux = Tmux(f"{loradeck_command()} attach {runs / 't4-session'}", width=110, height=34)
    try:
        tmux.wait_for("t4-session", "step 24/30", "GPU0 Tesla T4", "ended with 2m42s left")
        tmux.keys("q")
        time.sleep(1.0)
        assert "GPU0" not in tmux.screen()
    finally:
        tmux.close()


def test_attach_to_a_missing_run_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tui.cli", "attach", str(tmp_path / "nope")], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such run directory" in result.stderr and "Traceback" not in result.stderr


def pane_halves(screen: str, width: int) -> tuple[str, str]:
    """The left and right chat panes of a captured screen (they split the width in two)."""
    lefts, rights = [], []
    for line in screen.splitlines():
        lefts.append(line[:width // 2])
        rights.append(line[width // 2:])
    return "\n".join(lefts), "\n".join(rights)


@pytest.mark.slow
def test_after_the_demo_run_a_user_chats_side_by_side_and_rates_six_prompts_blind(tmp_path, default_model_dir):
    """The issue's done-when, on the bundled model: train the demo briefly, open Chat from Home, see base and
    adapter answer side by side, rate six held-out prompts blind, read the tally and the preference file; then
    `loradeck eval` on the demo config's held-out prompts, the blind verdicts in the report."""
    import json

    runs = tmp_path / "runs"
    run_dir = runs / "demo"
    train = subprocess.run([sys.executable, "-m", "tui.cli", "train", "sample_data/configs/demo.toml", "--run-dir",
                            str(run_dir), "--set", "train.max_steps=24", "--set", "train.learning_rate=1e-3",
                            "--set", "train.eval_every=0", "--set", "train.save_every=0", "--set", "probe.prompts=[]"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stderr
    started = time.monotonic()
    while '"finished"' not in (run_dir / "events.jsonl").read_text():
        assert time.monotonic() - started < 900, "the demo run did not finish"
        time.sleep(2)
    assert (run_dir / "adapter" / "adapter_config.json").is_file()

    width = 140
    tmux = Tmux(f"{loradeck_command()} --runs-dir {runs}", width=width, height=40)
    try:
        tmux.wait_for("Runs", "demo", "finished")
        time.sleep(1.0)
        tmux.keys("t")
        tmux.wait_for("one copy", "base", "demo", "message every pane", timeout=120)
        tmux.keys("F2")  # shorter answers keep the test quick: the base model can ramble for 256 tokens
        tmux.wait_for("Generation settings")
        tmux.keys("Tab", "Tab")  # temperature → top-p → max new tokens
        for key in ("C-u", "4", "8", "Enter"):
            tmux.keys(key)
            time.sleep(0.2)
        tmux.wait_for("48 new tokens")
        tmux.keys("What is the capital of Norway?", "Enter")
        tmux.wait_for("2 panes in", timeout=120)  # the timing line appears when both panes are done
        left, right = pane_halves(tmux.screen(), width)
        assert "Oslo" in left and "ANSWER: Oslo" in right, "base on the left, the adapter's trained format right"

        tmux.keys("C-b")
        tmux.wait_for("Blind A/B")
        tmux.keys("F3")
        tmux.wait_for("Prompt set")
        tmux.keys("Enter")  # the run directory is offered: its held-out rows
        ratings_file = run_dir / "chat" / "ratings.jsonl"
        for number in range(1, 7):
            tmux.wait_for("rate:", "A · left", "B · right", timeout=180)
            screen = tmux.screen()
            assert "A · left — " not in screen, "labels stay hidden until the rating"
            left, right = pane_halves(screen, width)
            # this user likes the trained ANSWER/REASON format
            key = "a" if "ANSWER:" in left and "ANSWER:" not in right else \
                  "b" if "ANSWER:" in right and "ANSWER:" not in left else "t"
            tmux.keys(key)
            while not ratings_file.is_file() or len(ratings_file.read_text().splitlines()) < number:
                time.sleep(0.1)
            time.sleep(0.3)
        screen = tmux.wait_for("demo wins", timeout=30) and tmux.screen()
        ratings = [json.loads(line) for line in ratings_file.read_text().splitlines()]
        wins = sum(1 for r in ratings if r["winner"] == "demo")
        assert wins >= 5 and {r["left_label"] for r in ratings} == {"base", "demo"}
        assert f"demo wins {wins} · base wins 0" in screen
        if wins == 6:  # 6 of 6: the 95% interval of the win rate lies above 50%
            assert "demo is better than base" in screen
        preferences = [json.loads(line) for line in (run_dir / "chat" / "preferences.jsonl").read_text().splitlines()]
        assert len(preferences) == wins and all("ANSWER:" in p["chosen"][0]["content"] for p in preferences)
        tmux.keys("Escape")  # stops the 7th prompt's answers
        time.sleep(1.0)
        tmux.keys("Escape")
        tmux.wait_for("Runs")
        tmux.keys("q")
        tmux.wait_gone("Runs")  # q quits (the chat worker has already been stopped on leaving Chat)
    finally:
        tmux.close()

    # Did it help? The report on the demo config's held-out prompts, with this user's blind verdicts in it.
    evaluation = subprocess.run([sys.executable, "-m", "tui.cli", "eval", str(run_dir), "--limit", "6", "--json"],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr
    report = json.loads(evaluation.stdout)
    base, adapter = report["models"]["base"], report["models"]["demo"]
    assert adapter["metrics"]["format"] >= 0.9 and base["metrics"]["format"] <= 0.1
    assert adapter["heldout_loss"] < base["heldout_loss"]
    correct = report["comparisons"][0]["metrics"]["answer"]
    assert correct["pairs"] == 6 and correct["interval"] is not None and base["metrics"]["answer"] is not None
    assert report["blind"][0]["wins"] == wins and report["blind"][0]["challenger"] == "demo"
    markdown = (Path(report["folder"]) / "report.md").read_text()
    assert "| format conformance |" in markdown and f"demo wins {wins}" in markdown
