"""The fault matrix: what a careful operator does to a run, repeated, and whether loradeck held.

Every trial drives the real commands (`loradeck train`, `loradeck resume`, the
detached trainer, the chat worker process) on a 2-layer model with the real
SmolLM2 tokenizer, then checks from the outside:

- status: `loradeck status`, the monitor's and Home's view (RunHistory) agree
  with what really happened (a killed trainer is `lost`, within seconds);
- adapters: the handoff bundle and the newest checkpoint verify (every file's
  SHA-256), and how many optimizer steps were logged after the newest intact
  save ("steps lost"; with a save every step, 1 is the step in flight);
- hostile input: refused (a warning event or a one-line error), and the run or
  worker goes on.

    python bench/fault_matrix.py [--quick]      # --quick: fewer trials, for a dry run

Needs root for the full-disk rows (a size-limited tmpfs per trial); they are
skipped otherwise. Prints one table; exits non-zero when any trial failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
LORADECK = [sys.executable, "-m", "tui.cli"]
DEMO = str(REPO / "sample_data" / "configs" / "demo.toml")


@dataclass
class Row:
    fault: str
    trials: int = 0
    wrong_status: int = 0
    adapters_lost: int = 0  # intact saves missing beyond the step in flight
    accepted: int = 0  # hostile inputs that got through
    steps_lost: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.wrong_status + self.adapters_lost + self.accepted


def tiny_model(folder: Path) -> Path:
    """The tests' tiny model: 2 layers, hidden 64, the real SmolLM2 tokenizer (a step costs milliseconds)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.models.loading import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct", progress=lambda m: None))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sets(model: Path, *extra: str) -> list[str]:
    values = [f"model.name={model}", "model.dtype=float32", "data.max_length=128", "train.batch_size=2",
              "train.eval_every=0", "probe.prompts=[]", *extra]
    return [arg for value in values for arg in ("--set", value)]


def loradeck(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(LORADECK + [str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def events(run_dir: Path) -> list[dict]:
    from engine.run.events import read_events

    return read_events(run_dir / "events.jsonl")


def wait_for(predicate, timeout: float = 120, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def last_step(run_dir: Path) -> int:
    steps = [e["step"] for e in events(run_dir) if e["type"] == "step"]
    return max(steps) if steps else 0


def statuses(run_dir: Path) -> tuple[str, str, str]:
    """(CLI, monitor, Home) status of a run, each as its own code path computes it."""
    from engine.run.history import RunHistory

    cli = json.loads(loradeck("status", run_dir, "--json").stdout)["status"]
    monitor, home = RunHistory(run_dir), RunHistory(run_dir, curves=False)
    monitor.poll(budget_s=5)
    home.poll(budget_s=5)
    return cli, monitor.summary.status, home.summary.status


def newest_intact_step(run_dir: Path) -> int:
    """The step of the newest save that verifies (handoff or checkpoint); -1 when none does."""
    from engine.errors import RunError
    from engine.run.paths import complete_checkpoints
    from engine.train.checkpoint import verify_checkpoint

    best = -1
    for folder in [run_dir / "handoff", *reversed(complete_checkpoints(run_dir / "checkpoints"))]:
        try:
            best = max(best, verify_checkpoint(folder)["global_step"])
        except RunError:
            continue
    return best


def damaged_saves(run_dir: Path) -> list[str]:
    """Saves that exist (state.json present) yet do not verify: what a kill must never leave."""
    from engine.errors import RunError
    from engine.run.paths import complete_checkpoints
    from engine.train.checkpoint import verify_checkpoint

    damaged = []
    for folder in [run_dir / "handoff", *complete_checkpoints(run_dir / "checkpoints")]:
        if (folder / "state.json").exists():
            try:
                verify_checkpoint(folder)
            except RunError as exc:
                damaged.append(str(exc))
    return damaged


def trainer_pid(run_dir: Path) -> int | None:
    from engine.run.status import trainer_pid as pid_of

    return pid_of(run_dir)


def kill_and_judge(row: Row, run_dir: Path, pid: int) -> None:
    """SIGKILL the trainer, then: lost everywhere within 5 s, no damaged save, steps lost beyond the one in flight."""
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    seen = wait_for(lambda: statuses(run_dir) == ("lost",) * 3, timeout=5, interval=0.2)
    row.trials += 1
    if not seen:
        row.wrong_status += 1
        row.notes.append(f"{run_dir.name}: status {statuses(run_dir)}")
    else:
        row.notes.append(f"lost after {time.monotonic() - killed_at:.1f} s")
    if damaged_saves(run_dir):
        row.adapters_lost += 1
        row.notes.append(f"{run_dir.name}: {damaged_saves(run_dir)[0]}")
    lost = last_step(run_dir) - max(newest_intact_step(run_dir), 0)
    row.steps_lost.append(lost)
    if lost > 1:
        row.adapters_lost += 1
        row.notes.append(f"{run_dir.name}: {lost} steps after the newest intact save")


def start_detached(run_dir: Path, model: Path, *extra: str) -> int:
    result = loradeck("train", DEMO, "--run-dir", run_dir, *sets(model, *extra))
    if result.returncode:
        raise SystemExit(f"could not start a run: {result.stderr}")
    return wait_for(lambda: trainer_pid(run_dir), timeout=60)


def sigkill_random(model: Path, root: Path, trials: int, rng: random.Random) -> Row:
    row = Row("SIGKILL at a random moment")
    for trial in range(trials):
        run_dir = root / f"kill-{trial}"
        pid = start_detached(run_dir, model, "train.max_steps=400", "train.save_every=1")
        wait_for(lambda: last_step(run_dir) >= 1, timeout=120)
        time.sleep(rng.uniform(0, 1.5))
        kill_and_judge(row, run_dir, pid)
    return row


def staging_folders(run_dir: Path) -> list[Path]:
    return list(run_dir.glob(".*.tmp-*")) + list((run_dir / "checkpoints").glob(".*.tmp-*"))


def sigkill_mid_save(model: Path, root: Path, wanted: int) -> Row:
    row = Row("SIGKILL in the middle of a save")
    attempts = 0
    while row.trials < wanted and attempts < wanted * 4:
        attempts += 1
        run_dir = root / f"midsave-{attempts}"
        pid = start_detached(run_dir, model, "train.max_steps=400", "train.save_every=1")
        wait_for(lambda: last_step(run_dir) >= 2, timeout=120)
        if not wait_for(lambda: staging_folders(run_dir), timeout=20, interval=0.0005):
            os.kill(pid, signal.SIGKILL)
            continue
        os.kill(pid, signal.SIGSTOP)  # freeze it inside the save, then check it really is mid-save
        if not staging_folders(run_dir):
            os.kill(pid, signal.SIGKILL)
            continue
        kill_and_judge(row, run_dir, pid)
    row.notes.insert(0, f"{row.trials} of {attempts} attempts caught a save in flight")
    return row


def mount_small_disk(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def fill(disk: Path) -> None:
    for name, block in (("filler", 1 << 20), ("filler-small", 4096)):
        with open(disk / name, "ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * block)
            except OSError:
                pass


def disk_full(model: Path, root: Path, trials: int, rng: random.Random) -> Row | None:
    row = Row("disk full (ENOSPC) at a random save")
    for trial in range(trials):
        disk = root / f"disk-{trial}"
        if not mount_small_disk(disk):
            return None
        try:
            run_dir = disk / "run"
            freed = trial % 2 == 0  # half the trials free the disk again, half stay full to the end
            start_detached(run_dir, model, "train.max_steps=30", "train.save_every=1", "train.keep_checkpoints=3")
            fill_at = rng.randint(3, 12)
            wait_for(lambda: last_step(run_dir) >= fill_at, timeout=120, interval=0.005)
            fill(disk)
            if freed:
                wait_for(lambda: last_step(run_dir) >= fill_at + 3, timeout=120, interval=0.01)
                (disk / "filler").unlink()
                (disk / "filler-small").unlink()
            wait_for(lambda: trainer_pid(run_dir) is None, timeout=180)
            row.trials += 1
            log = (run_dir / "events.jsonl").read_bytes()
            every = events(run_dir)
            if len(every) != len(log.splitlines()):
                row.wrong_status += 1
                row.notes.append(f"trial {trial}: a torn line in the log")
            seen = statuses(run_dir)
            ended = [e for e in every if e["type"] in ("finished", "error")][-1]
            # Finished means the final adapter really is on disk (the trainer's reserve can make room for it);
            # failed must say the disk was full. Either way every view must agree.
            truthful = (ended["type"] == "finished" and seen == ("finished",) * 3 and
                        newest_intact_step(run_dir) == ended["step"] and (run_dir / "adapter").is_dir()) or \
                       (ended["type"] == "error" and "disk full" in ended["message"] and seen == ("failed",) * 3)
            warnings = [e for e in every if e.get("kind") == "disk"]
            outcome = "finished, final adapter saved" if ended["type"] == "finished" else "failed: disk full"
            row.notes.append(f"trial {trial} ({'freed' if freed else 'stayed full'}): {outcome}; "
                             f"{len(warnings)} disk warning(s)")
            if not truthful or not warnings:
                row.wrong_status += 1
                row.notes.append(f"trial {trial}: status {seen} after {ended}")
            if damaged_saves(run_dir):
                row.adapters_lost += 1
                row.notes.append(f"trial {trial}: {damaged_saves(run_dir)[0]}")
            row.steps_lost.append(last_step(run_dir) - max(newest_intact_step(run_dir), 0))
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    row.notes.insert(0, "steps lost: logged steps after the newest intact save when the run ended")
    return row


def concurrent_starts(model: Path, root: Path, trials: int) -> Row:
    row = Row("two trainers started together on one run dir")
    for trial in range(trials):
        run_dir = root / f"twins-{trial}"
        command = LORADECK + ["train", DEMO, "--run-dir", str(run_dir), *sets(model, "train.max_steps=3")]
        both = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in both]
        wait_for(lambda: trainer_pid(run_dir) is None, timeout=120)
        row.trials += 1
        started = [e for e in events(run_dir) if e["type"] == "started"]
        refused = [err for code, err in results if code != 0]
        one_line = all(len(err.strip().splitlines()) == 1 for err in refused)
        if len(started) != 1 or len(refused) != 1 or not one_line:
            row.accepted += 1
            row.notes.append(f"trial {trial}: {len(started)} trainers started; exits {[c for c, _ in results]}")
        elif statuses(run_dir) != ("finished",) * 3:
            row.wrong_status += 1
    return row


def control_files(model: Path, root: Path) -> list[Row]:
    """One live run; each hostile kind dropped into control/ at its own step."""
    from engine.run.paths import RunPaths

    kinds = {
        "FIFO": lambda path: os.mkfifo(path),
        "directory": lambda path: path.mkdir(),
        "symlink to /dev/zero": lambda path: path.symlink_to("/dev/zero"),
        "10 MB file": lambda path: path.write_bytes(b"{" + b" " * (10 << 20) + b"}"),
        "not JSON": lambda path: path.write_text("stop please"),
        "a JSON array": lambda path: path.write_text("[1, 2]"),
        "extend NaN": lambda path: path.write_text('{"command": "extend", "seconds": NaN}'),
        "extend inf": lambda path: path.write_text('{"command": "extend", "seconds": 1e999}'),
        "extend \"abc\"": lambda path: path.write_text('{"command": "extend", "seconds": "abc"}'),
        "extend 10 years": lambda path: path.write_text('{"command": "extend", "seconds": 315360000}'),
        "unknown command": lambda path: path.write_text('{"command": "rm -rf /"}'),
    }
    run_dir = root / "control"
    start_detached(run_dir, model, "train.max_steps=60", "train.save_every=0", "session.budget=2h")
    paths = RunPaths(run_dir)
    rows = []
    for number, (kind, drop) in enumerate(kinds.items()):
        before = len([e for e in events(run_dir) if e.get("kind") == "control"])
        at = last_step(run_dir)
        drop(paths.control / f"hostile-{number}.json")
        warned = wait_for(lambda: len([e for e in events(run_dir) if e.get("kind") == "control"]) > before,
                          timeout=30, interval=0.02)
        row = Row(f"control/: {kind}", trials=1)
        if not warned or trainer_pid(run_dir) is None:
            row.accepted += 1
            row.notes.append(f"dropped at step {at}: no warning, or the trainer stopped")
        rows.append(row)
    wait_for(lambda: trainer_pid(run_dir) is None, timeout=300)
    finished = [e for e in events(run_dir) if e["type"] == "finished"]
    deadlines = {e["deadline_at"] for e in events(run_dir) if e["type"] == "deadline"}
    if not finished or finished[-1]["reason"] != "completed" or len(deadlines) != 1:
        rows[-1].accepted += 1
        rows[-1].notes.append(f"the run did not complete untouched: {finished[-1:]} deadlines {len(deadlines)}")
    return rows


def crafted_bundles(model: Path, root: Path) -> list[Row]:
    from tests.engine.train.test_bundle_hostile import CRAFTED

    source = root / "bundle-source"
    data = root / "private.jsonl"
    shutil.copy(REPO / "sample_data" / "demo_train.jsonl", data)
    result = loradeck("train", DEMO, "--run-dir", source, "--foreground",
                      *sets(model, "train.max_steps=2", "train.save_every=1", f"data.path={data}"))
    if result.returncode:
        raise SystemExit(f"could not train the source bundle: {result.stderr}")
    rows = []
    for number, (kind, (craft, expected)) in enumerate(CRAFTED.items()):
        bundle = root / f"crafted-{number}"
        shutil.copytree(source / "handoff", bundle, symlinks=True)
        craft(bundle)
        target = root / f"resumed-{number}"
        outcome = loradeck("resume", bundle, "--run-dir", target, "--foreground")
        row = Row(f"bundle: {kind}", trials=1)
        message = outcome.stderr.strip()
        if outcome.returncode == 0 or expected not in message or len(message.splitlines()) != 1 or target.exists():
            row.accepted += 1
            row.notes.append(f"exit {outcome.returncode}: {message[:120]}")
        rows.append(row)
    return rows


def chat_requests(model: Path, root: Path) -> list[Row]:
    from tests.engine.chat.test_generation import BAD_REQUESTS

    worker = subprocess.Popen([sys.executable, "-m", "engine.chat.worker"], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def send(request) -> None:
        worker.stdin.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        worker.stdin.flush()

    def next_event(kinds=("ready", "error", "done", "adapter")) -> dict:
        while True:
            line = worker.stdout.readline()
            if not line:
                return {"event": "eof"}
            event = json.loads(line)
            if event["event"] in kinds:
                return event

    send({"op": "load", "base": str(model), "adapters": []})
    assert next_event()["event"] == "ready"
    question = [{"role": "user", "content": "Hello?"}]
    hostile = [(f"request refused for '{expected}'", request) for request, expected in BAD_REQUESTS]
    hostile += [("line: [1, 2]", "[1, 2]"), ("line: not JSON", "not json at all"), ("line: a bare string", '"stop"'),
                ("prompt beyond the context", {"op": "generate", "id": "long", "panes": [
                    {"label": "base", "messages": [{"role": "user", "content": "word " * 5000}]}]})]
    rows = []
    for kind, request in hostile:
        send(request)
        reply = next_event()
        send({"op": "generate", "id": "check", "panes": [{"label": "base", "messages": question}],
              "settings": {"max_new_tokens": 2}})
        check = next_event()
        row = Row(f"chat: {kind}", trials=1)
        if reply["event"] != "error" or "\n" in reply.get("message", "") or check.get("id") != "check":
            row.accepted += 1
            row.notes.append(f"reply {reply}, then {check.get('event')}")
        rows.append(row)
    send({"op": "quit"})
    worker.wait(timeout=30)
    return rows


def cancel_during_prefill(tokens: int = 6000) -> Row:
    """The bundled SmolLM2-135M on this CPU: a long prompt, cancel sent once reading it has begun."""
    from engine.models.loading import resolve_model

    row = Row(f"chat: cancel while a {tokens}-token prompt is read")
    worker = subprocess.Popen([sys.executable, "-m", "engine.chat.worker"], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    base = resolve_model("smollm2-135m-instruct", progress=lambda m: None)
    worker.stdin.write(json.dumps({"op": "load", "base": base, "adapters": []}) + "\n")
    worker.stdin.flush()
    while json.loads(worker.stdout.readline())["event"] != "ready":
        pass
    prompt = " ".join(f"w{i}" for i in range(tokens * 2 // 9))  # "w123" is about 4.5 tokens
    latencies = []
    for _ in range(3):
        worker.stdin.write(json.dumps({"op": "generate", "id": "long", "panes": [
            {"label": "base", "messages": [{"role": "user", "content": prompt}]}], "settings": {"max_new_tokens": 4}})
            + "\n")
        worker.stdin.flush()
        time.sleep(1.5)
        sent = time.monotonic()
        worker.stdin.write('{"op": "cancel"}\n')
        worker.stdin.flush()
        while True:
            event = json.loads(worker.stdout.readline())
            if event["event"] in ("done", "error"):
                break
        latencies.append(time.monotonic() - sent)
        row.trials += 1
        if event["event"] != "done" or event["answers"][0]["stopped_by"] != "cancelled" or latencies[-1] > 1.0:
            row.accepted += 1
    worker.stdin.write('{"op": "quit"}\n')
    worker.stdin.flush()
    worker.wait(timeout=30)
    row.notes.append("cancel answered after " + ", ".join(f"{s:.2f} s" for s in latencies))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few trials of each, for a dry run")
    args = parser.parse_args()
    rng = random.Random(14)
    kills, mid, disks, twins = (3, 2, 2, 2) if args.quick else (20, 10, 6, 10)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tiny_model(root / "tiny-model")
        rows = [sigkill_random(model, root, kills, rng), sigkill_mid_save(model, root, mid)]
        full = disk_full(model, root, disks, rng)
        rows += [full] if full else []
        rows.append(concurrent_starts(model, root, twins))
        rows += control_files(model, root)
        rows += crafted_bundles(model, root)
        rows += chat_requests(model, root)
        rows.append(cancel_during_prefill())
    print(f"fault matrix ({time.monotonic() - started:.0f} s; {os.uname().machine}, {os.cpu_count()} CPUs)")
    print(f"{'fault':52} {'trials':>6} {'failed':>6} {'wrong status':>12} {'adapter lost':>12} {'accepted':>8} "
          f"{'steps lost':>10}")
    for row in rows:
        lost = f"{min(row.steps_lost)}–{max(row.steps_lost)}" if row.steps_lost else "—"
        print(f"{row.fault[:52]:52} {row.trials:6} {row.failures:6} {row.wrong_status:12} {row.adapters_lost:12} "
              f"{row.accepted:8} {lost:>10}")
    for row in rows:
        for note in row.notes:
            if not note.startswith("lost after"):
                print(f"  {row.fault}: {note}")
    waits = [float(n.split()[2]) for row in rows for n in row.notes if n.startswith("lost after")]
    if waits:
        print(f"  killed runs shown lost after {min(waits):.1f}–{max(waits):.1f} s (CLI, monitor and Home)")
    if not full:
        print("  disk-full rows skipped: mounting a small tmpfs needs root")
    return 1 if any(row.failures for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
