"""What state a run is in: its summary folded from events, and the one rule for whether its trainer lives.

The CLI (`loradeck status`), Home and the monitor all decide "running" versus
"lost" with `settle_liveness`, so they never disagree about a run.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RunError
from engine.run.events import EventTail, drain
from engine.run.mirror import REMOTE_FILE, remote_pid
from engine.run.paths import RunPaths, require_run_dir, staging_path

WARNINGS_KEPT = 50
RUN_STATUSES = ("starting", "running", "finished", "stopped", "deadline", "failed", "lost")
LIVE_STATUSES = ("starting", "running")
STARTUP_GRACE_S = 60.0  # a run directory with no events yet may still be waiting for its trainer to start
LOST_MESSAGE = "the trainer process is gone without a finished event (killed?)"


def run_lock_held(paths: RunPaths) -> bool | None:
    """Whether a live trainer holds the run's lock; None for a run without a lock file (older loradeck).

    The kernel drops a flock when its process dies, SIGKILL included, so this never mistakes a dead trainer for
    a live one, nor a stranger that inherited its pid.
    """
    try:
        handle = os.open(paths.lock_file, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
    finally:
        os.close(handle)


LOCK_WAIT_S = 2.0  # clients probe the lock for microseconds; a second trainer holds it for a whole run


def hold_run_lock(paths: RunPaths) -> int:
    """Take the run directory's trainer lock for this process's life (returns the open descriptor) and write our
    pid into it; RunError when another live trainer holds it."""
    try:
        handle = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise RunError(f"{paths.lock_file}: cannot open the run's lock file ({exc.strerror}) — is the run "
                       "directory writable, and trainer.lock a plain file?") from None
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(handle)
                raise RunError(f"{paths.root}: another trainer is running in this run directory — attach to it, "
                               "or pick another --run-dir") from None
            time.sleep(0.02)
    os.ftruncate(handle, 0)
    os.write(handle, str(os.getpid()).encode())
    return handle


def trainer_pid(run_dir: str | Path) -> int | None:
    """The pid of the run's live trainer process, or None when none is running.

    The rule: the trainer's lock is held (then the pid it wrote into the lock file). Runs started before the
    lock existed fall back to the pid file and a signal-0 probe.
    """
    paths = RunPaths(Path(run_dir))
    if (paths.root / REMOTE_FILE).is_file():  # a mirror of a run on another machine: its trainer as last heard
        return remote_pid(paths.root)
    held = run_lock_held(paths)
    if held is not None:
        if not held:
            return None
        try:
            return int(paths.lock_file.read_text().strip())
        except (OSError, ValueError):
            return None  # the trainer took the lock a moment ago and has not written its pid yet: still starting
    pid_file = paths.pid_file
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie (exited, not yet reaped) is not a live trainer
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid


@dataclass
class RunSummary:
    """What a person wants to know about a run at a glance."""

    run_id: str
    path: str
    status: str = "starting"
    step: int = 0
    max_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_s: float | None = None
    padding: float | None = None
    mfu: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    time_left_s: float | None = None
    ended_at: float | None = None  # the final event's time (finished or error)
    model: str | None = None
    dataset: str | None = None
    backend: str | None = None
    method: str | None = None  # sft or dpo (from model_loaded)
    world_size: int = 1  # training processes
    sharded: bool = False  # the processes shard the model (FSDP) instead of each holding all of it (DDP)
    message: str | None = None
    checkpoints: int = 0
    last_checkpoint: str | None = None
    handoff: str | None = None
    pid: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for `status --json`."""
        return asdict(self)


def _share(value: Any) -> float | None:
    """A 0–1 figure from an event, or None for anything else (the log may come from anywhere)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def apply_event(summary: RunSummary, event: dict[str, Any]) -> None:
    """Fold one event into a summary (the TUI calls this per event; no re-reading)."""
    kind = event.get("type")
    summary.updated_at = event.get("ts", summary.updated_at)
    if "step" in event and isinstance(event["step"], int):
        summary.step = max(summary.step, event["step"])
    if kind == "started":
        summary.status = "running"
        summary.started_at = event.get("ts")
        summary.max_steps = event.get("max_steps", summary.max_steps)
        summary.model = event.get("model", summary.model)
        summary.dataset = event.get("dataset", summary.dataset)
    elif kind == "model_loaded":
        summary.backend = event.get("backend", summary.backend)
        summary.max_steps = event.get("max_steps", summary.max_steps)
        method = event.get("method")
        summary.method = method if method in ("sft", "dpo") else summary.method
        world = event.get("world_size")
        summary.world_size = world if isinstance(world, int) and not isinstance(world, bool) and world > 0 else 1
        summary.sharded = event.get("strategy") == "fsdp" and summary.world_size > 1
    elif kind == "step":
        summary.loss = event.get("loss", summary.loss)
        summary.learning_rate = event.get("lr", summary.learning_rate)
        summary.epoch = event.get("epoch", summary.epoch)
        summary.tokens_per_s = event.get("tokens_per_s", summary.tokens_per_s)
        summary.padding = _share(event.get("padding"))
        summary.mfu = _share(event.get("mfu"))
    elif kind == "eval":
        summary.eval_loss = event.get("eval_loss", summary.eval_loss)
    elif kind == "checkpoint":
        summary.checkpoints += 1
        summary.last_checkpoint = event.get("path", summary.last_checkpoint)
        if event.get("handoff"):
            summary.handoff = event["handoff"]
    elif kind == "deadline":
        summary.deadline_at = event.get("deadline_at", summary.deadline_at)
        summary.time_left_s = event.get("time_left_s", summary.time_left_s)
    elif kind == "warning":
        summary.warnings = summary.warnings[-(WARNINGS_KEPT - 1):] + [str(event.get("message", ""))]
    elif kind == "finished":
        summary.ended_at = event.get("ts", summary.ended_at)
        summary.status = {"deadline": "deadline", "stopped": "stopped"}.get(event.get("reason"), "finished")
        summary.message = event.get("message", summary.message)
        summary.loss = event.get("loss", summary.loss)
    elif kind == "error":
        summary.ended_at = event.get("ts", summary.ended_at)
        summary.status = "failed"
        summary.message = event.get("message", summary.message)


def session_time_left(summary: RunSummary, now: float | None = None) -> float | None:
    """Session seconds left: live from the deadline while the run goes on; for an ended run, what was left when
    its final event was written (not a figure from an earlier deadline event). None without a session clock."""
    if summary.deadline_at is None:
        return None
    if summary.status in LIVE_STATUSES:
        return summary.deadline_at - (now or time.time())
    if summary.ended_at is not None:
        return summary.deadline_at - summary.ended_at
    return summary.time_left_s


def run_duration(summary: RunSummary, now: float | None = None) -> float | None:
    """How long the run has trained: until now while live, until its final event once it has ended (or its last
    event, for a lost run)."""
    if summary.started_at is None:
        return None
    end = summary.ended_at if summary.ended_at is not None else (
        (now or time.time()) if summary.status in LIVE_STATUSES else summary.updated_at)
    return max(0.0, (end or summary.started_at) - summary.started_at)


def settle_liveness(summary: RunSummary, pid: int | None, *, created_at: float | None = None,
                    now: float | None = None) -> None:
    """The one liveness rule: a run its events call starting or running, whose trainer is not alive, is lost.

    A run with no events yet is given `STARTUP_GRACE_S` from `created_at` (when its directory was prepared)
    for the trainer to start.
    """
    summary.pid = pid
    if summary.status not in LIVE_STATUSES or pid is not None:
        return
    if summary.updated_at is None and created_at is not None and (now or time.time()) - created_at < STARTUP_GRACE_S:
        return
    summary.status = "lost"
    summary.message = summary.message or LOST_MESSAGE


def prepared_at(paths: RunPaths) -> float | None:
    """When the run directory was prepared (its config.toml's time), None when it has no config."""
    try:
        return paths.config.stat().st_mtime
    except OSError:
        return None


SNAPSHOT_FORMAT = "loradeck-summary/1"
SNAPSHOT_EVERY_S = 2.0
SNAPSHOT_CHECK_BYTES = 256
CACHE_AFTER_BYTES = 8 << 20  # a reader that had to fold this much of a finished run's log leaves a snapshot


def _log_digest(path: Path, offset: int) -> str | None:
    """SHA-256 of the log's bytes just before `offset`: ties a snapshot to the log it was folded from."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, offset - SNAPSHOT_CHECK_BYTES))
            return hashlib.sha256(handle.read(min(offset, SNAPSHOT_CHECK_BYTES))).hexdigest()
    except OSError:
        return None


_SUMMARY_TYPES = {f.name: f.type for f in dataclasses.fields(RunSummary)}


def _summary_from_dict(data: Any, paths: RunPaths) -> RunSummary | None:
    """A RunSummary from snapshot JSON, or None when any field has the wrong type (the file is untrusted)."""
    if not isinstance(data, dict):
        return None
    values = {}
    for name, kind in _SUMMARY_TYPES.items():
        value = data.get(name)
        if name in ("run_id", "path"):
            continue
        if value is None:
            if "None" not in kind and name not in ("status", "step", "checkpoints", "warnings"):
                return None
            continue
        if name == "warnings":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                return None
        elif name == "status":
            if value not in RUN_STATUSES:
                return None
        elif kind.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
            return None
        elif kind.startswith("float") and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            return None
        elif kind.startswith("str") and not isinstance(value, str):
            return None
        values[name] = value
    return RunSummary(run_id=paths.root.name, path=str(paths.root), **values)


def load_snapshot(paths: RunPaths) -> tuple[RunSummary, int] | None:
    """The summary snapshot and the log offset it covers, or None when absent, malformed or not of this log."""
    try:
        with open(paths.summary, "rb") as handle:
            data = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        return None
    offset = data.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    try:
        if offset > paths.events.stat().st_size:
            return None
    except OSError:
        return None
    if data.get("tail_sha256") != _log_digest(paths.events, offset):
        return None
    summary = _summary_from_dict(data.get("summary"), paths)
    return (summary, offset) if summary is not None else None


def write_snapshot(paths: RunPaths, summary: RunSummary, offset: int) -> None:
    """Atomically write `summary.json`: `summary` folded from the log's first `offset` bytes."""
    fields = summary.to_dict()
    fields["pid"] = None  # liveness is decided when read, never remembered
    data = {"format": SNAPSHOT_FORMAT, "offset": offset, "tail_sha256": _log_digest(paths.events, offset),
            "summary": fields}
    temporary = staging_path(paths.summary)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, separators=(",", ":"))
        os.replace(temporary, paths.summary)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def fold_log(paths: RunPaths) -> tuple[RunSummary, int, int]:
    """The run's summary from its snapshot (when valid) plus the events after it: (summary, log offset reached,
    bytes folded here). Reads the log in bounded chunks."""
    snapshot = load_snapshot(paths)
    summary, start = snapshot if snapshot else (RunSummary(run_id=paths.root.name, path=str(paths.root)), 0)
    tail = EventTail(paths.events, start)
    for event in drain(tail):
        apply_event(summary, event)
    return summary, tail.offset, tail.offset - start


class SummaryKeeper:
    """The trainer's side of the snapshot: folds each event it writes and rewrites `summary.json` every few
    seconds and at every milestone, so readers fold only the last seconds of log."""

    MILESTONES = ("started", "model_loaded", "checkpoint", "finished", "error", "resumed")

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.summary, self.offset, _ = fold_log(paths)
        self.written_at = 0.0

    def __call__(self, event: dict[str, Any], offset: int) -> None:
        apply_event(self.summary, event)
        self.offset = offset
        if event.get("type") in self.MILESTONES or time.monotonic() - self.written_at >= SNAPSHOT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the snapshot now (a full disk only means readers fold more of the log)."""
        try:
            write_snapshot(self.paths, self.summary, self.offset)
        except OSError:
            return
        self.written_at = time.monotonic()


def summarize_run(run_dir: str | Path) -> RunSummary:
    """Read a run directory (live or finished) into a RunSummary: the snapshot plus the log after it."""
    paths = require_run_dir(run_dir)
    pid = trainer_pid(paths.root)
    summary, offset, folded = fold_log(paths)
    if folded >= CACHE_AFTER_BYTES and pid is None:
        try:  # no trainer appends to this log now: spare the next reader the fold
            write_snapshot(paths, summary, offset)
        except OSError:
            pass
    settle_liveness(summary, pid, created_at=prepared_at(paths))
    return summary


def list_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Summaries of every run directory under `runs_dir`, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    summaries = []
    for child in root.iterdir():
        if child.is_dir() and (child / "events.jsonl").is_file():
            summaries.append(summarize_run(child))
    summaries.sort(key=lambda s: s.started_at or 0, reverse=True)
    return summaries
