"""The demo report vs answering the same prompts one at a time, measured side by side in one run.

    python bench/eval_speed.py [RUN]

RUN is a run trained from sample_data/configs/demo.toml (default: train one
here first, ~5 min on 2 cores). Ours: `loradeck eval RUN` — held-out loss for
base and adapter, every answer from batched calls that mix prompts and models,
scores, intervals, the files. Baseline: `loradeck chat --prompts RUN --compare`,
which answers each held-out prompt with base and adapter in its own call. Both
are the real commands (model load included), greedy, same max new tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LORADECK = [sys.executable, "-m", "tui.cli"]
MAX_NEW_TOKENS = "48"


def timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.monotonic() - started


def main() -> int:
    if len(sys.argv) > 1:
        run = Path(sys.argv[1])
    else:
        run = Path(tempfile.mkdtemp()) / "demo"
        print("training the demo run first …", flush=True)
        timed(LORADECK + ["train", "sample_data/configs/demo.toml", "--run-dir", str(run), "--foreground"])
    # --batch-size 64 is eval.batch_size's default; a run recorded before it was the default keeps its own.
    ours = timed(LORADECK + ["eval", str(run), "--max-new-tokens", MAX_NEW_TOKENS, "--batch-size", "64"])
    baseline = timed(LORADECK + ["chat", "--adapter", str(run), "--compare", "--prompts", str(run),
                                 "--max-new-tokens", MAX_NEW_TOKENS])
    print(f"loradeck eval (report: loss + batched answers + scores): {ours:6.1f} s")
    print(f"loradeck chat --compare, one prompt at a time (answers only): {baseline:6.1f} s")
    print(f"ratio: {baseline / ours:.2f}x faster (target >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
