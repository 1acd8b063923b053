"""The run directory a training process owns, and summaries read from it.

```
runs/<run-id>/
  config.toml        resolved config, written once at start
  events.jsonl       append-only event log
  control/           commands from clients (mode 0700)
  checkpoints/step-000120/   adapter + state.json, renamed into place whole
  handoff/           newest complete resume bundle
  adapter/           the final adapter (PEFT format)
  trainer.pid        the live trainer's pid
```
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.errors import RunError
from engine.events import read_events

RUN_STATUSES = ("starting", "running", "finished", "stopped", "deadline", "failed", "lost")


@dataclass(frozen=True)
class RunPaths:
    """Every path inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def handoff(self) -> Path:
        return self.root / "handoff"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def pid_file(self) -> Path:
        return self.root / "trainer.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "trainer.log"


def trainer_pid(run_dir: str | Path) -> int | None:
    """The pid of the run's live trainer process, or None when none is running."""
    pid_file = RunPaths(Path(run_dir)).pid_file
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


def require_run_dir(path: str | Path) -> RunPaths:
    """RunPaths for `path`, or a RunError saying why it is not a run directory."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise RunError(f"{path}: no such run directory")
    paths = RunPaths(root)
    if not paths.events.is_file() and not paths.config.is_file():
        raise RunError(f"{path}: not a run directory (no events.jsonl or config.toml) — pass runs/<run-id>")
    return paths


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
    started_at: float | None = None
    updated_at: float | None = None
    deadline_at: float | None = None
    time_left_s: float | None = None
    model: str | None = None
    dataset: str | None = None
    backend: str | None = None
    message: str | None = None
    checkpoints: int = 0
    last_checkpoint: str | None = None
    handoff: str | None = None
    pid: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for `status --json`."""
        return asdict(self)


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
    elif kind == "step":
        summary.loss = event.get("loss", summary.loss)
        summary.learning_rate = event.get("lr", summary.learning_rate)
        summary.epoch = event.get("epoch", summary.epoch)
        summary.tokens_per_s = event.get("tokens_per_s", summary.tokens_per_s)
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
        summary.warnings.append(event.get("message", ""))
    elif kind == "finished":
        summary.status = {"deadline": "deadline", "stopped": "stopped"}.get(event.get("reason"), "finished")
        summary.message = event.get("message", summary.message)
        summary.loss = event.get("loss", summary.loss)
    elif kind == "error":
        summary.status = "failed"
        summary.message = event.get("message", summary.message)


def summarize_events(run_id: str, path: str, events: Iterable[dict[str, Any]], pid: int | None) -> RunSummary:
    """A RunSummary from a sequence of events and the trainer's liveness."""
    summary = RunSummary(run_id=run_id, path=path, pid=pid)
    for event in events:
        apply_event(summary, event)
    if summary.status in ("starting", "running") and pid is None:
        summary.status = "lost"
        summary.message = summary.message or "the trainer process is gone without a finished event (killed?)"
    return summary


def summarize_run(run_dir: str | Path) -> RunSummary:
    """Read a run directory (live or finished) into a RunSummary."""
    paths = require_run_dir(run_dir)
    pid = trainer_pid(paths.root)
    return summarize_events(paths.root.name, str(paths.root), read_events(paths.events), pid)


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
