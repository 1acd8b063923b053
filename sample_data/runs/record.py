"""Re-record the event streams in sample_data/runs/ that the TUI tests and screenshots replay.

    python sample_data/runs/record.py

`t4-session` trains the bundled model for 30 steps under a 10-minute session
clock with NVML replaced by two simulated Tesla T4s (tests/fakes.py) — this
machine has no GPU, and the GPU panel needs device figures to show. Losses,
timings, host figures and everything else are real. The other recordings
(`demo-finished`, `kaggle-deadline`) are copies of real runs' events.jsonl and
config.toml.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from engine.config import load_config
    from engine.train.session import run_class_for
    from engine.run.telemetry import set_backend_factory
    from engine.train.run import run_training
    from tests.fakes import FakeT4Backend

    set_backend_factory(FakeT4Backend)
    config = load_config(REPO / "sample_data" / "configs" / "demo.toml", [
        "train.max_steps=30", "train.eval_every=10", "train.save_every=10", "session.budget=10m",
        "session.buffer=30s", "probe.prompts=[]"])
    work = Path(tempfile.mkdtemp()) / "t4-session"
    run_training(work, config, run_class=run_class_for(config), progress=print)
    target = HERE / "t4-session"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for name in ("events.jsonl", "config.toml"):
        shutil.copy(work / name, target / name)
    print(f"recorded {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
