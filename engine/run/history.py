"""A run's history, followed incrementally: what a monitor needs, never re-reading the whole log.

`RunHistory.poll()` reads only the bytes appended since the last call (via
EventTail) and folds each event into the summary and the plotted series. A long
log is caught up in time-boxed slices; until then the summary shown is the
trainer's snapshot (`summary.json`), or a `loading` status, never a guess from a
half-read log.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.run.alerts import Alert, detect_alerts
from engine.run.events import EventTail
from engine.run.paths import RunPaths, require_run_dir
from engine.run.status import RunSummary, apply_event, load_snapshot, prepared_at, settle_liveness, trainer_pid

TELEMETRY_HISTORY = 720   # one hour at the trainer's 5 s telemetry rate
LOG_KINDS = ("started", "model_loaded", "resumed", "checkpoint", "warning", "control", "error", "finished",
             "eval_report")


@dataclass
class Series:
    """Parallel step/value lists for one plotted quantity."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: Any) -> None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return
        self.steps.append(step)
        self.values.append(number)

    def pairs(self, last: int | None = None) -> list[tuple[int, float]]:
        """(step, value) pairs, only the newest `last` when given."""
        if last is not None:
            return list(zip(self.steps[-last:], self.values[-last:]))
        return list(zip(self.steps, self.values))

    def downsampled(self, limit: int, since_step: int | None = None) -> tuple[list[int], list[float]]:
        """At most about `limit` points for plotting: bucket means, the newest point always kept."""
        start = 0
        if since_step is not None:
            import bisect

            start = bisect.bisect_left(self.steps, since_step)
        steps, values = self.steps[start:], self.values[start:]
        if len(steps) <= limit:
            return steps, values
        size = -(-len(steps) // limit)
        out_steps, out_values = [], []
        for begin in range(0, len(steps), size):
            chunk = [v for v in values[begin:begin + size] if v == v]
            out_steps.append(steps[min(begin + size, len(steps)) - 1])
            out_values.append(sum(chunk) / len(chunk) if chunk else float("nan"))
        out_steps[-1], out_values[-1] = steps[-1], values[-1]
        return out_steps, out_values

    def last(self) -> float | None:
        return self.values[-1] if self.values else None

    def __len__(self) -> int:
        return len(self.steps)


class RunHistory:
    """Summary, curves, telemetry and log lines of one run directory, updated by `poll()`.

    `curves=False` (Home's run list) starts from the snapshot's offset and keeps only the summary current.
    """

    def __init__(self, run_dir: str | Path, *, curves: bool = True):
        self.paths: RunPaths = require_run_dir(run_dir)
        self.folded = RunSummary(run_id=self.paths.root.name, path=str(self.paths.root))
        snapshot = load_snapshot(self.paths)
        self.snapshot, self.snapshot_offset = snapshot if snapshot else (None, 0)
        self.tail = EventTail(self.paths.events)
        if not curves and self.snapshot is not None:
            self.folded, self.tail.offset = self.snapshot, self.snapshot_offset
        self.loading = self.tail.behind() > 0  # until a poll reads to the end of the log
        self.loss, self.eval_loss, self.lr = Series(), Series(), Series()
        self.grad_norm, self.tokens_per_s = Series(), Series()
        self.reward_margin, self.preference_accuracy = Series(), Series()  # DPO runs
        self.telemetry: deque = deque(maxlen=TELEMETRY_HISTORY)
        self.log: deque = deque(maxlen=500)
        self.log_count = 0  # log lines ever added (the deque forgets the oldest)
        self.deadline: dict[str, Any] = {}
        self.new_warnings: list[dict[str, Any]] = []
        self.events_seen = 0
        self.step_times: deque = deque(maxlen=30)  # (ts, step) of recent step events, for the ETA
        self.loss_tail_before_resume: Series = Series()
        self.alerts: list[Alert] = []
        self._alerts_at = -1
        self.first_samples: dict[str, Any] | None = None  # probe answers before (or at the start of) training
        self.latest_samples: dict[str, Any] | None = None

    @property
    def summary(self) -> RunSummary:
        """What to show: the folded summary once the log is read up to the snapshot; before that the snapshot,
        or (no snapshot) a `loading` copy saying how much is left."""
        if self.tail.offset >= self.snapshot_offset and not (self.loading and self.snapshot is None):
            return self.folded
        if self.snapshot is not None:
            return self.snapshot
        return dataclasses.replace(self.folded, status="loading", warnings=list(self.folded.warnings),
                                   message=f"reading the event log ({self.tail.behind() / 1e6:.0f} MB left)")

    def poll(self, limit_bytes: int = 4 << 20, budget_s: float = 0.15) -> int:
        """Fold newly appended events in, in slices of `limit_bytes`, for at most about `budget_s` seconds;
        returns how many. Also refreshes liveness."""
        started = time.monotonic()
        count = 0
        while True:
            before = self.tail.offset
            events = self.tail.read_new(limit_bytes)
            for event in events:
                self._apply(event)
            count += len(events)
            if self.tail.offset == before:  # read to the end: what is shown is the whole log's
                self.loading = False
                break
            if time.monotonic() - started >= budget_s:  # stopped early: still loading if anything is left
                self.loading = self.tail.behind() > 0
                break
        self.events_seen += count
        pid = trainer_pid(self.paths.root)
        created_at = prepared_at(self.paths)
        for summary in (self.folded, self.snapshot):
            if summary is not None:
                settle_liveness(summary, pid, created_at=created_at)
        if count and len(self.loss) != self._alerts_at and not self.loading:
            self._alerts_at = len(self.loss)
            self.alerts = detect_alerts(self.loss.pairs(last=200), self.eval_loss.pairs(last=50))
        return count

    def _apply(self, event: dict[str, Any]) -> None:
        apply_event(self.folded, event)
        kind, step = event.get("type"), event.get("step")
        if kind == "step":
            self.loss.add(step, event.get("loss"))
            self.lr.add(step, event.get("lr"))
            self.grad_norm.add(step, event.get("grad_norm"))
            self.tokens_per_s.add(step, event.get("tokens_per_s"))
            if "reward_margin" in event:
                self.reward_margin.add(step, event.get("reward_margin"))
                self.preference_accuracy.add(step, event.get("preference_accuracy"))
            self.step_times.append((event.get("ts", time.time()), step))
        elif kind == "eval":
            self.eval_loss.add(step, event.get("eval_loss"))
        elif kind == "telemetry":
            self.telemetry.append(event)
        elif kind == "deadline":
            self.deadline = event
        elif kind == "sample":
            self.first_samples = self.first_samples or event
            self.latest_samples = event
        elif kind == "resumed":
            for tail_step, tail_loss in event.get("loss_tail") or []:
                self.loss_tail_before_resume.add(tail_step, tail_loss)
        if kind == "warning":
            self.new_warnings.append(event)
        if kind in LOG_KINDS:
            self.log.append(event)
            self.log_count += 1

    def take_warnings(self) -> list[dict[str, Any]]:
        """Warnings that arrived since the last call (the TUI rings the bell for deadline ones)."""
        warnings, self.new_warnings = self.new_warnings, []
        return warnings

    def seconds_per_step(self) -> float | None:
        """Recent wall seconds per optimizer step, from step events."""
        if len(self.step_times) < 2:
            return None
        (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def eta_seconds(self) -> float | None:
        """Time to the planned last step at the recent pace (None when unknown or finished)."""
        pace = self.seconds_per_step()
        if pace is None or not self.summary.max_steps or self.summary.status != "running":
            return None
        return max(0.0, (self.summary.max_steps - self.summary.step) * pace)

    def time_left(self, now: float | None = None) -> float | None:
        """Session seconds left: live from the deadline, or as it was at an ended run's final event."""
        from engine.run.status import session_time_left

        return session_time_left(self.summary, now)

    def final_save_eta(self, now: float | None = None) -> float | None:
        """Seconds until the clock will stop the run and save: time left minus the engine's margin."""
        left, margin = self.time_left(now), self.deadline.get("margin_s")
        if left is None or margin is None or self.summary.status != "running":
            return None
        return max(0.0, left - margin)

    def last_telemetry(self) -> dict[str, Any] | None:
        return self.telemetry[-1] if self.telemetry else None

    def telemetry_series(self, pick) -> list[float]:
        """One number per telemetry event (e.g. VRAM used of device 0), N/A dropped."""
        values = []
        for event in self.telemetry:
            try:
                value = pick(event)
            except (KeyError, IndexError, TypeError):
                value = None
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                values.append(float(value))
        return values
