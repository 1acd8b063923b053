"""A 200 MB event log: `loradeck status` and the monitor's attach, ours vs reading the whole log.

Writes a run directory whose `events.jsonl` is about `--megabytes` MB of the
events a long run really writes (a step event per step, telemetry every five
steps, a checkpoint every 500 steps) through the trainer's own writer, so the
trainer's summary snapshot (`summary.json`) is kept exactly as in a real run.
Then, each in a fresh process (RSS is the process's peak):

- status (snapshot):  `loradeck status RUN` as the user runs it;
- status (no snapshot): the same after deleting `summary.json` (a run from an
  older loradeck, or a snapshot the disk had no room for) — it folds the whole
  log in bounded chunks, then leaves a snapshot for the next reader;
- baseline:           every line parsed in one read (`json.loads` per line of
  `read_bytes().splitlines()`), what a plain script does and what status did;
- attach:             `RunHistory` as the monitor opens it: time until its
  first slice is shown (keys answer from then on) and until the whole curve is
  loaded, with peak RSS.

    python bench/large_log.py [--megabytes 200]

Targets (issue 14): status < 1 s and < 200 MB RSS; attach interactive < 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROBES = {
    "status": "import sys, time; t = time.perf_counter(); from tui.cli.main import main; "
              "sys.argv = ['loradeck', 'status', RUN]; import io, contextlib; out = io.StringIO()\n"
              "with contextlib.redirect_stdout(out): main()\n"
              "print('SECONDS', time.perf_counter() - t); print('STATUS', out.getvalue().split('[')[1].split(']')[0])",
    "baseline": "import json, time; from pathlib import Path; t = time.perf_counter()\n"
                "events = [json.loads(line) for line in Path(RUN, 'events.jsonl').read_bytes().splitlines() if line]\n"
                "print('SECONDS', time.perf_counter() - t); print('STATUS', events[-1]['type'])",
    "attach": "import time; t = time.perf_counter(); from engine.run.history import RunHistory\n"
              "h = RunHistory(RUN); h.poll(budget_s=0.25); first = time.perf_counter() - t; shown = h.summary.status\n"
              "while h.loading: h.poll(budget_s=0.25)\n"
              "print('FIRST', first); print('SECONDS', time.perf_counter() - t); print('STATUS', shown, h.summary.status, len(h.loss))",
}


def write_log(run_dir: Path, megabytes: int) -> int:
    """A realistic long run's log, written through the trainer's own writer and snapshot keeper."""
    from engine.run.events import EventWriter
    from engine.run.paths import RunPaths
    from engine.run.status import SummaryKeeper

    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True)
    paths.config.write_text("[model]\nname = 'bench'\n")
    keeper = SummaryKeeper(paths)
    events = EventWriter(paths.events, observer=keeper)
    rng = random.Random(0)
    target = megabytes * 1_000_000
    max_steps = target // 330
    events.emit("started", pid=1, model="HuggingFaceTB/SmolLM2-135M-Instruct", dataset="data/train.jsonl")
    events.emit("model_loaded", backend="transformers", max_steps=max_steps, train_rows=50_000, eval_rows=500)
    step = 0
    while events.offset < target:
        step += 1
        events.emit("step", step=step, loss=2.5 * 0.9999 ** step + rng.random() * 0.1, lr=2e-4, grad_norm=rng.random(),
                    epoch=step / 5000, tokens_per_s=4000 + rng.random() * 100, seconds=0.41, tokens=1640,
                    padding_share=0.04)
        if step % 5 == 0:
            events.emit("telemetry", step=step, gpus=[{"index": 0, "name": "NVIDIA H100 80GB HBM3", "util": 97,
                                                        "mem_used": 61_234_000_000, "mem_total": 85_899_345_920,
                                                        "temp": 71, "power_w": 612.5}],
                        process={"allocated": 58_000_000_000, "reserved": 60_000_000_000, "peak": 59_000_000_000},
                        host={"ram_used": 41_000_000_000, "ram_total": 135_000_000_000, "cpu": 12.5})
        if step % 500 == 0:
            events.emit("checkpoint", step=step, path=str(paths.checkpoints / f"step-{step:06d}"),
                        handoff=str(paths.handoff), reason="periodic", seconds=1.2, final=False)
    events.emit("finished", reason="completed", step=step, loss=0.8, message=f"trained {step} steps")
    events.close()
    keeper.flush()
    return step


def probe(name: str, run_dir: Path) -> dict:
    script = f"RUN = {str(run_dir)!r}\n" + PROBES[name] + \
        "\nimport resource; print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode:
        raise SystemExit(f"{name} failed:\n{result.stderr}")
    values = {}
    for line in result.stdout.splitlines():
        key, _, rest = line.partition(" ")
        values[key] = rest
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run-long"
        started = time.perf_counter()
        steps = write_log(run_dir, args.megabytes)
        size = (run_dir / "events.jsonl").stat().st_size
        print(f"log: {size / 1e6:.0f} MB, {steps} steps (written in {time.perf_counter() - started:.0f} s)")
        rows = [("status (snapshot)", probe("status", run_dir))]
        (run_dir / "summary.json").unlink()
        rows.append(("status (no snapshot, 1st)", probe("status", run_dir)))
        rows.append(("status (snapshot it left)", probe("status", run_dir)))
        rows.append(("baseline: read all lines", probe("baseline", run_dir)))
        rows.append(("attach (monitor)", probe("attach", run_dir)))
        base = float(rows[3][1]["SECONDS"])
        print(f"{'':28} {'seconds':>8} {'peak RSS MB':>12} {'vs baseline':>12}  shown")
        for label, values in rows:
            seconds = float(values["SECONDS"])
            first = f" (first slice {float(values['FIRST']):.2f} s)" if "FIRST" in values else ""
            print(f"{label:28} {seconds:8.2f} {float(values['RSS']):12.0f} {base / seconds:11.1f}×  "
                  f"{values.get('STATUS', '')}{first}")


if __name__ == "__main__":
    main()
