"""The session clock: free-tier GPU sessions end after N hours; save before they do.

`SessionClock` is pure arithmetic over measured times (testable with a fake
clock). `SessionRun` plugs it into training: after every step it asks whether
the time left still covers the slowest recent step, a save and the buffer; when
it does not, the run stops with the adapter saved and the handoff bundle written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.config import RunConfig, SessionSection, format_duration, parse_datetime, parse_duration
from engine.errors import ConfigError
from engine.train.run import TrainingRun

# Free-tier session lengths. Kaggle ends GPU notebook sessions after 12 h of run time.
# Colab's free tier documents "up to 12 hours" but often ends sooner; 11 h keeps an hour spare.
PRESET_BUDGETS = {"kaggle": 12 * 3600.0, "colab": 11 * 3600.0}
STEP_HEADROOM = 1.25     # the next step may be slower than the slowest one seen
SAVE_HEADROOM = 1.5      # saves vary more (disk, page cache)
SAVE_FLOOR_S = 1.0
DEADLINE_EVENT_EVERY_S = 15.0


def _started_at(stat: Path, uptime: float) -> float:
    """Wall-clock start of the process whose /proc/<pid>/stat is `stat` (field 22: start time in ticks)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return time.time() - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def container_start_time(proc: str | Path = "/proc") -> tuple[float, str]:
    """Wall-clock time the container (or machine) started, and how it was found.

    A notebook's session clock starts when its container does, before training;
    PID 1 is the container's first process, so its age is the session's age.
    Falls back to the machine's uptime.
    """
    proc = Path(proc)
    uptime = float((proc / "uptime").read_text().split()[0])
    try:
        return _started_at(proc / "1" / "stat", uptime), "age of PID 1"
    except (OSError, IndexError, ValueError):
        return time.time() - uptime, "/proc/uptime"


def process_start_time(proc: str | Path = "/proc") -> float:
    """Wall-clock start time of this process (the trainer), from /proc, else now."""
    proc = Path(proc)
    try:
        return _started_at(proc / "self" / "stat", float((proc / "uptime").read_text().split()[0]))
    except (OSError, IndexError, ValueError):
        return time.time()


def session_budget(section: SessionSection) -> float | None:
    """Seconds in the session budget (explicit budget beats a preset), or None without one."""
    if section.budget:
        return parse_duration(section.budget)
    if section.preset:
        return PRESET_BUDGETS[section.preset]
    return None


def has_session_clock(section: SessionSection) -> bool:
    """Whether the config asks for a session clock at all."""
    return bool(section.budget or section.preset or section.deadline)


def resolve_deadline(section: SessionSection) -> tuple[float, str]:
    """The wall-clock deadline (epoch seconds) and a phrase saying where it came from.

    An absolute deadline wins; otherwise the budget counts from the process
    start, or from the container's start with `start = "auto"`.
    """
    if section.deadline:
        moment = parse_datetime(section.deadline)
        return moment.timestamp(), f"deadline {moment.isoformat(timespec='minutes')}"
    budget = session_budget(section)
    if budget is None:
        raise ConfigError("session: set session.budget, session.preset or session.deadline")
    if section.start == "auto":
        started, how = container_start_time()
        source = f"container start ({how})"
    else:
        started, source = process_start_time(), "trainer start"
    label = section.budget or f"{section.preset} preset"
    return started + budget, f"{label} from {source}"


def check_session(section: SessionSection) -> tuple[float, str] | None:
    """The (deadline, source) a run would get, None without a clock; ConfigError when it is already past."""
    if not has_session_clock(section):
        return None
    deadline, source = resolve_deadline(section)
    if deadline <= time.time():
        raise ConfigError(f"session: the {source} is already past — pass a later --deadline or a --session budget")
    return deadline, source


@dataclass
class ClockDecision:
    """What the clock concluded after a step."""

    stop: bool
    time_left_s: float
    needed_s: float
    step_s: float
    save_s: float


@dataclass
class SessionClock:
    """Deadline arithmetic over measured step, eval and save times."""

    deadline: float
    buffer_s: float
    warn_at_s: list[float] = field(default_factory=list)
    now: Callable[[], float] = time.time
    warned: set = field(default_factory=set)

    def time_left(self) -> float:
        return self.deadline - self.now()

    @staticmethod
    def estimate(samples: Iterable[float], headroom: float, floor: float = 0.0) -> float:
        values = list(samples)
        return max(floor, max(values) * headroom) if values else floor

    def step_and_save(self, step_seconds: Iterable[float], save_seconds: Iterable[float]) -> tuple[float, float]:
        """What the clock plans with: the slowest recent step and save, each with its headroom (saves have a floor)."""
        return (self.estimate(step_seconds, STEP_HEADROOM),
                self.estimate(save_seconds, SAVE_HEADROOM, SAVE_FLOOR_S))

    def needed(self, step_seconds: Iterable[float], save_seconds: Iterable[float], eval_seconds: Iterable[float],
               *, save_due: bool, eval_due: bool, eval_steps_guess: float = 1.0) -> tuple[float, float, float]:
        """Seconds one more step needs before the final save can still finish: (needed, step, save).

        An eval not yet measured is guessed as `eval_steps_guess` training steps.
        """
        step, save = self.step_and_save(step_seconds, save_seconds)
        evaluation = 0.0
        if eval_due:
            eval_seconds = list(eval_seconds)
            evaluation = self.estimate(eval_seconds, STEP_HEADROOM) if eval_seconds else step * eval_steps_guess
        # Continuing means: the save and eval due now, one more step, then the final save, plus the buffer.
        total = (save if save_due else 0.0) + evaluation + step + save + self.buffer_s
        return total, step, save

    def decide(self, step_seconds, save_seconds, eval_seconds, *, save_due: bool = False,
               eval_due: bool = False, eval_steps_guess: float = 1.0) -> ClockDecision:
        """Stop now (and save) unless the time left covers another step, the work due now and a save."""
        needed, step, save = self.needed(step_seconds, save_seconds, eval_seconds, save_due=save_due,
                                         eval_due=eval_due, eval_steps_guess=eval_steps_guess)
        left = self.time_left()
        return ClockDecision(stop=left < needed, time_left_s=left, needed_s=needed, step_s=step, save_s=save)

    def final_eval_fits(self, step_seconds: Iterable[float], save_seconds: Iterable[float],
                        eval_batches: int) -> bool:
        """Whether an eval of `eval_batches` batches (each priced as a training step) and the final save still
        fit before the deadline, buffer kept."""
        step, save = self.step_and_save(step_seconds, save_seconds)
        return self.time_left() > step * eval_batches + save + self.buffer_s

    def crossed_thresholds(self) -> list[float]:
        """Warning thresholds newly passed since the last call (each reported once)."""
        left = self.time_left()
        crossed = [t for t in self.warn_at_s if left <= t and t not in self.warned]
        self.warned.update(crossed)
        return crossed

    def extend(self, seconds: float) -> None:
        """Move the deadline later (the user bought more time) and re-arm the warnings now ahead of us."""
        self.deadline += seconds
        left = self.time_left()
        self.warned = {t for t in self.warned if left <= t}


class SessionRun(TrainingRun):
    """A training run that saves and stops before the session deadline."""

    def __init__(self, *args, now: Callable[[], float] = time.time, **kwargs):
        super().__init__(*args, **kwargs)
        section = self.config.session
        deadline, self.deadline_source = resolve_deadline(section)
        self.clock = SessionClock(deadline=deadline, buffer_s=parse_duration(section.buffer),
                                  warn_at_s=sorted((parse_duration(t) for t in section.warn_at), reverse=True),
                                  now=now)
        self.last_deadline_event = 0.0
        self.last_decision: ClockDecision | None = None

    def emit_deadline(self, step: int, decision: ClockDecision | None = None, **extra: Any) -> None:
        decision = decision or self.last_decision
        margin = decision.needed_s if decision else None
        self.events.emit("deadline", step=step, deadline_at=self.clock.deadline,
                         time_left_s=round(self.clock.time_left(), 1),
                         margin_s=round(margin, 1) if margin is not None else None,
                         step_s=round(decision.step_s, 3) if decision else None,
                         save_s=round(decision.save_s, 3) if decision else None,
                         buffer_s=self.clock.buffer_s, source=self.deadline_source, **extra)
        self.last_deadline_event = time.monotonic()

    def refuse_start(self) -> str | None:
        left = self.clock.time_left()
        self.emit_deadline(self.resumed_from["step"] if self.resumed_from else 0)
        if left <= self.clock.buffer_s + SAVE_FLOOR_S:
            return (f"not training: {format_duration(left)} left in the session ({self.deadline_source}), less than "
                    f"the {format_duration(self.clock.buffer_s)} buffer — extend the budget or lower session.buffer")
        return None

    def on_train_begin(self, state, control) -> None:
        self.warn(state.global_step)

    def warn(self, step: int) -> None:
        crossed = self.clock.crossed_thresholds()
        if crossed:
            threshold = min(crossed)
            self.events.emit("warning", step=step, kind="deadline", threshold_s=threshold,
                             time_left_s=round(self.clock.time_left(), 1),
                             message=f"{format_duration(self.clock.time_left())} left in the session: the run saves "
                                     f"and stops by itself before the deadline")

    def should_stop_after_step(self, state, control, *, save_due: bool) -> str | None:
        if state.global_step >= state.max_steps:
            return None  # the run is complete; its final save follows at once
        # Before the first eval is measured, guess it generously: a forward pass over every eval
        # batch at half the cost of a training micro-batch's forward + backward.
        eval_guess = 0.5 * self.eval_batches / self.config.train.grad_accum
        decision = self.clock.decide(self.step_seconds, self.save_seconds, self.eval_seconds,
                                     save_due=save_due, eval_due=bool(control.should_evaluate),
                                     eval_steps_guess=eval_guess)
        self.last_decision = decision
        self.warn(state.global_step)
        if decision.stop:
            self.emit_deadline(state.global_step, decision, stopping=True)
            return "deadline"
        if time.monotonic() - self.last_deadline_event >= DEADLINE_EVENT_EVERY_S:
            self.emit_deadline(state.global_step, decision)
        return None

    def eval_deadline(self) -> float | None:
        """An after-training report must be done a buffer before the session ends."""
        return self.clock.deadline - self.clock.buffer_s

    def has_time_for(self, eval_batches: int) -> bool:
        """Whether a final eval of `eval_batches` batches still leaves time for the final save."""
        return self.clock.final_eval_fits(self.step_seconds, self.save_seconds, eval_batches)

    def after_step(self, state, control) -> None:
        if not self.save_seconds and not self.save_failures:
            # Save time is measured on a real save, early, so the margin never rests on a guess.
            self.request_save("first")

    def handle_command(self, command: dict[str, Any], state) -> None:
        if command["command"] != "extend":
            super().handle_command(command, state)
            return
        seconds = float(command.get("seconds", 0))
        self.clock.extend(seconds)
        self.events.emit("warning", step=state.global_step, kind="extend",
                         message=f"session extended by {format_duration(seconds)}: "
                                 f"{format_duration(self.clock.time_left())} left")
        self.emit_deadline(state.global_step, extended_by_s=seconds)


def run_class_for(config: RunConfig) -> type[TrainingRun]:
    """The TrainingRun flavour a config needs: SessionRun when it has a budget, preset or deadline."""
    return SessionRun if has_session_clock(config.session) else TrainingRun
