"""TUI performance, side by side in one run.

1. startup: seconds from launching `loradeck` in tmux to an interactive home
   screen, next to a bare Textual app that shows one line (the floor).
2. ingest: events/s folded into a RunHistory from a large recorded log
   (incremental tail + series), next to plain `read_events` (json per line, no
   folding); and the monitor's frame time while 500 events land per tick.
3. attach overhead: tokens/s of the bundled model on the demo data with no
   client, then with `loradeck attach` open on the run in tmux.

    python bench/tui_performance.py [--events 200000] [--steps 16] [--skip-attach]

Targets (issue 5): home < 1 s; attach costs < 2% throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
LORADECK = str(Path(sys.executable).with_name("loradeck"))


def tmux_session(name: str, command: str, width: int = 100, height: int = 30) -> None:
    """Start a detached tmux session, retrying while a previous tmux server is still shutting down."""
    for attempt in range(5):
        result = subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                                 "-c", str(REPO), f"env TERM=xterm-256color {command}"], capture_output=True)
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"tmux would not start: {result.stderr.decode().strip()}")


def tmux_time_to(command: str, text: str, timeout: float = 30.0) -> float:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    tmux_session(name, command)
    try:
        while time.monotonic() - started < timeout:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
            if text in screen:
                return time.monotonic() - started
            time.sleep(0.01)
        raise RuntimeError(f"never saw {text!r}")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def bench_startup(runs: Path) -> None:
    hello = Path(tempfile.mkdtemp()) / "hello.py"
    hello.write_text("from textual.app import App\nfrom textual.widgets import Static\n"
                     "class Hello(App):\n    def compose(self):\n        yield Static('hello-ready')\nHello().run()\n")
    ours = [tmux_time_to(f"{LORADECK} --runs-dir {runs}", "demo-finished") for _ in range(5)]
    floor = [tmux_time_to(f"{sys.executable} {hello}", "hello-ready") for _ in range(5)]
    print(f"startup   loradeck home {statistics.median(ours):.2f} s   bare Textual app {statistics.median(floor):.2f} s"
          f"   ratio {statistics.median(ours) / statistics.median(floor):.2f}x   (median of 5; target < 1 s)")


def make_log(path: Path, count: int) -> None:
    recorded = [json.loads(line) for line in (REPO / "sample_data/runs/t4-session/events.jsonl").read_text().splitlines()]
    steps = [e for e in recorded if e["type"] == "step"]
    telemetry = [e for e in recorded if e["type"] == "telemetry"]
    with open(path, "w") as handle:
        handle.write(json.dumps(recorded[0]) + "\n")
        for index in range(count - 1):
            if index % 20 == 19:
                event = {**telemetry[index % len(telemetry)], "step": index // 2}
            else:
                event = {**steps[index % len(steps)], "step": index, "max_steps": count}
            handle.write(json.dumps(event) + "\n")


def bench_ingest(count: int) -> None:
    from engine.run.events import read_events
    from engine.run.history import RunHistory

    run_dir = Path(tempfile.mkdtemp()) / "big-run"
    run_dir.mkdir()
    make_log(run_dir / "events.jsonl", count)
    started = time.perf_counter()
    plain = len(read_events(run_dir / "events.jsonl"))
    plain_s = time.perf_counter() - started
    history = RunHistory(run_dir)
    started = time.perf_counter()
    while history.poll():
        pass
    ours_s = time.perf_counter() - started
    print(f"ingest    RunHistory {count / ours_s:,.0f} events/s   plain read_events {plain / plain_s:,.0f} events/s   "
          f"ratio {plain_s / ours_s:.2f}x   ({count:,} events, {len(history.loss):,} steps folded)")
    asyncio.run(frame_times(run_dir))


async def frame_times(source: Path) -> None:
    from tui.app import LoradeckApp
    from tui.screens.monitor import MonitorScreen

    run_dir = Path(tempfile.mkdtemp()) / "live-run"
    run_dir.mkdir()
    lines = (source / "events.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_text("".join(lines[:1000]))
    app = LoradeckApp(runs_dir=run_dir.parent, attach_to=run_dir)
    frames = []
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, MonitorScreen)
        with open(run_dir / "events.jsonl", "a") as handle:
            for start in range(1000, min(len(lines), 41000), 500):
                handle.write("".join(lines[start:start + 500]))
                handle.flush()
                began = time.perf_counter()
                screen.refresh_from_history()
                await pilot.pause(0)
                frames.append(time.perf_counter() - began)
    frames.sort()
    print(f"frames    monitor refresh with 500 new events per tick: median {statistics.median(frames) * 1000:.1f} ms, "
          f"p95 {frames[int(len(frames) * 0.95)] * 1000:.1f} ms over {len(frames)} ticks "
          f"(one tick per {MonitorScreen.POLL_SECONDS:.1f} s → {500 / MonitorScreen.POLL_SECONDS:,.0f} events/s sustained)")


CLIENT_SHARE: list[float] = []


def _pid_of(pattern: str) -> int | None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of a live process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def train_tokens_per_s(run_dir: Path, steps: int, attach: bool) -> float:
    from engine.run.events import read_events

    command = [sys.executable, "-m", "tui.cli", "train", str(REPO / "sample_data/configs/demo.toml"), "--run-dir",
               str(run_dir), "--set", f"train.max_steps={steps}", "--set", "train.eval_every=0", "--set",
               "train.save_every=0", "--set", "data.eval_path=", "--set", "data.eval_split=0"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    name = None
    trainer = int((run_dir / "trainer.pid").read_text())
    if attach:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        tmux_session(name, f"{LORADECK} attach {run_dir}", 110, 34)
        time.sleep(1.0)
    client = _pid_of(f"attach {run_dir}") if attach else None
    ticks = {"trainer": 0, "client": 0}
    try:
        while not any(e["type"] == "finished" for e in read_events(run_dir / "events.jsonl")):
            ticks["trainer"] = _cpu_ticks(trainer) or ticks["trainer"]
            if client:
                ticks["client"] = _cpu_ticks(client) or ticks["client"]
            time.sleep(1)
    finally:
        if name:
            subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    if attach and ticks["trainer"]:
        CLIENT_SHARE.append(ticks["client"] / ticks["trainer"])
    events = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]
    timed = events[2:]  # the first steps include warm-up
    tokens = timed[-1]["tokens_seen"] - events[1]["tokens_seen"]
    return tokens / (timed[-1]["ts"] - events[1]["ts"])


def bench_attach(steps: int, pairs: int = 3) -> None:
    """Alternate runs without and with a client so drift on a shared machine hits both sides alike."""
    work = Path(tempfile.mkdtemp())
    alone, watched = [], []
    for index in range(pairs):
        alone.append(train_tokens_per_s(work / f"alone-{index}", steps, attach=False))
        watched.append(train_tokens_per_s(work / f"watched-{index}", steps, attach=True))
    a, w = statistics.median(alone), statistics.median(watched)
    print(f"attach    no client {a:.1f} tok/s   TUI attached {w:.1f} tok/s   ratio {w / a:.3f}x   "
          f"(median of {pairs} alternating pairs; runs spread {min(alone + watched):.0f}–{max(alone + watched):.0f} "
          f"tok/s; cost {max(0.0, 1 - w / a) * 100:.1f}%; target < 2%)")
    if CLIENT_SHARE:
        print(f"          CPU time of the attached TUI = {statistics.median(CLIENT_SHARE) * 100:.2f}% of the trainer's "
              "CPU time over the same run (a direct measure, immune to run-to-run drift)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--skip-attach", action="store_true")
    parser.add_argument("--only", choices=("startup", "ingest", "attach"), default=None)
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp()) / "runs"
    shutil.copytree(REPO / "sample_data" / "runs", runs, ignore=shutil.ignore_patterns("*.py"))
    if args.only in (None, "startup"):
        bench_startup(runs)
    if args.only in (None, "ingest"):
        bench_ingest(args.events)
    if args.only == "attach" or (args.only is None and not args.skip_attach):
        bench_attach(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
