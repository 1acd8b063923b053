"""Session-clock trials: does a short budget stop in time, with a saved adapter, every time?

Each trial runs `loradeck train sample_data/configs/demo.toml --foreground --session B`
on the bundled model (steps of ~3 s on a 2-core CPU, with periodic saves and evals
in the mix) and compares the moment the process exited with the deadline the
trainer reported. A miss is an exit after the deadline or a run without a
loadable handoff bundle.

    python bench/session_deadline.py [--budgets 45 75 120] [--seeds 1 2] [--buffer 5s]

Target (issue 4): zero misses; report the median time left at exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", type=float, nargs="+", default=[45, 75, 120])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--buffer", default="5s")
    args = parser.parse_args()

    from engine.train.checkpoint import verify_checkpoint
    from engine.errors import RunError
    from engine.run.events import read_events

    work = Path(tempfile.mkdtemp(prefix="loradeck-deadline-"))
    rows, misses, left = [], 0, []
    for budget in args.budgets:
        for seed in args.seeds:
            run_dir = work / f"b{int(budget)}-s{seed}"
            command = [sys.executable, "-m", "tui.cli", "train", str(REPO / "sample_data/configs/demo.toml"),
                       "--foreground", "--run-dir", str(run_dir), "--session", f"{budget}s",
                       "--set", f"session.buffer={args.buffer}", "--set", f"train.seed={seed}",
                       "--set", "train.max_steps=10000", "--set", "train.save_every=7", "--set", "train.eval_every=9"]
            subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            exited = time.time()
            events = read_events(run_dir / "events.jsonl")
            deadline = [e for e in events if e["type"] == "deadline"][-1]["deadline_at"]
            finished = [e for e in events if e["type"] == "finished"]
            try:
                verify_checkpoint(run_dir / "handoff")
                bundle = "ok"
            except RunError as exc:
                bundle = f"BAD: {exc}"
            time_left = deadline - exited
            miss = time_left < 0 or bundle != "ok" or not finished or finished[-1]["reason"] != "deadline"
            misses += miss
            left.append(time_left)
            steps = finished[-1]["step"] if finished else None
            rows.append((budget, seed, steps, time_left, bundle, "MISS" if miss else ""))
            print(f"budget {budget:>5.0f}s seed {seed}: stopped at step {steps}, exited {time_left:5.1f}s before "
                  f"the deadline, bundle {bundle} {'MISS' if miss else ''}", flush=True)
    print(f"\n{len(rows)} trials, {misses} misses; time left at exit: median {statistics.median(left):.1f}s, "
          f"min {min(left):.1f}s, max {max(left):.1f}s (buffer {args.buffer})")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
