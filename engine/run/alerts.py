"""Training-health alerts from the loss history: NaN/inf, spikes, plateaus, overfitting.

Pure functions over (step, value) series, cheap enough to run on every refresh;
each alert names the step and says what to do.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

SPIKE_WINDOW = 20
SPIKE_FACTOR = 2.5
PLATEAU_WINDOW = 60
PLATEAU_TOLERANCE = 0.01
OVERFIT_EVALS = 3


@dataclass(frozen=True)
class Alert:
    """One finding about the run's health."""

    kind: str  # nan, spike, plateau, overfit
    step: int
    message: str
    severity: str = "warning"  # or "error"


def nonfinite_alert(losses: Sequence[tuple[int, float | str]]) -> Alert | None:
    """The first NaN/inf training loss, if any."""
    for step, loss in losses:
        value = float(loss) if not isinstance(loss, (int, float)) else loss
        if not math.isfinite(value):
            return Alert("nan", step, f"loss is {loss} at step {step}: lower train.learning_rate, keep "
                                      "train.max_grad_norm > 0, or use bf16/fp32", "error")
    return None


def spike_alert(losses: Sequence[tuple[int, float]]) -> Alert | None:
    """The newest loss far above the median of the steps before it."""
    finite = [(s, v) for s, v in losses if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(finite) < SPIKE_WINDOW + 1:
        return None
    step, last = finite[-1]
    median = statistics.median(v for _, v in finite[-SPIKE_WINDOW - 1:-1])
    if median > 0 and last > SPIKE_FACTOR * median:
        return Alert("spike", step, f"loss spiked to {last:.3g} at step {step} ({last / median:.1f}× the recent "
                                    f"median {median:.3g}); if it repeats, lower train.learning_rate")
    return None


def plateau_alert(losses: Sequence[tuple[int, float]]) -> Alert | None:
    """Training loss has not improved by 1% over the last PLATEAU_WINDOW logged steps."""
    finite = [(s, v) for s, v in losses if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(finite) < 2 * PLATEAU_WINDOW:
        return None
    before = statistics.mean(v for _, v in finite[-2 * PLATEAU_WINDOW:-PLATEAU_WINDOW])
    recent = statistics.mean(v for _, v in finite[-PLATEAU_WINDOW:])
    if before > 0 and recent > before * (1 - PLATEAU_TOLERANCE):
        step = finite[-1][0]
        return Alert("plateau", step, f"loss has plateaued near {recent:.3g} over the last {PLATEAU_WINDOW} logged "
                                      "steps; more steps may not help — try a higher learning rate or stop here")
    return None


def overfit_alert(losses: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]]) -> Alert | None:
    """Eval loss rose over the last OVERFIT_EVALS evals while the training loss fell."""
    if len(evals) < OVERFIT_EVALS:
        return None
    recent = evals[-OVERFIT_EVALS:]
    rising = all(b[1] > a[1] for a, b in zip(recent, recent[1:]))
    first_step, last_step = recent[0][0], recent[-1][0]
    train = [v for s, v in losses if first_step <= s <= last_step and isinstance(v, (int, float))]
    if rising and len(train) >= 2 and statistics.mean(train[len(train) // 2:]) < statistics.mean(train[:len(train) // 2]):
        return Alert("overfit", last_step, f"eval loss rose {recent[0][1]:.3g} → {recent[-1][1]:.3g} while training "
                                           "loss fell: the adapter is memorising — use an earlier checkpoint, "
                                           "fewer epochs or more data")
    return None


def detect_alerts(losses: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]]) -> list[Alert]:
    """Every current alert for a loss history (newest last)."""
    found = [nonfinite_alert(losses), spike_alert(losses), plateau_alert(losses), overfit_alert(losses, evals)]
    return [alert for alert in found if alert is not None]
