"""Is a difference over prompts real? Paired wins/losses/ties and a bootstrap interval of the mean difference.

Each prompt is scored for both models, so the comparison is paired: per prompt
the challenger wins, loses or ties, and the mean of the per-prompt differences
gets a 95% percentile interval from resampling prompts (paired bootstrap, a
fixed seed so a report is reproducible). A difference is claimed only when the
interval excludes zero — the rule the blind A/B tally applies to 50%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
MIN_PAIRS = 5  # fewer prompts than this never settle anything


@dataclass
class PairedComparison:
    """How `challenger` compares with `reference` on one metric over the prompts both were scored on."""

    metric: str
    challenger: str
    reference: str
    pairs: int
    wins: int
    losses: int
    ties: int
    challenger_mean: float | None
    reference_mean: float | None
    mean_delta: float | None
    interval: tuple[float, float] | None
    lower_is_better: bool = False

    @property
    def direction(self) -> str:
        """better, worse, or unclear (the interval includes zero, or too few prompts)."""
        if self.interval is None:
            return "unclear"
        low, high = self.interval
        if low > 0 or high < 0:
            up = low > 0
            return "worse" if up == self.lower_is_better else "better"
        return "unclear"

    def verdict(self) -> str:
        """One honest phrase for the report."""
        if short_verdict(self.direction, self.pairs) == "too few prompts":
            return f"too few prompts ({self.pairs}) to tell"
        if self.direction == "unclear":
            return "no clear difference (the 95% interval includes 0)"
        return f"{self.challenger} {self.direction} (95% interval excludes 0)"

    def to_dict(self) -> dict:
        row = asdict(self)
        row["interval"] = list(self.interval) if self.interval else None
        row["direction"] = self.direction
        row["verdict"] = self.verdict()
        return row


def short_verdict(direction: str, pairs: int) -> str:
    """A comparison's verdict for a table: better, worse, no clear difference, or too few prompts."""
    if pairs < MIN_PAIRS:
        return "too few prompts"
    return direction if direction in ("better", "worse") else "no clear difference"


def bootstrap_interval(deltas: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the mean of `deltas` over resampled prompts."""
    import numpy

    values = numpy.asarray(deltas, dtype=float)
    rng = numpy.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = numpy.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare_paired(metric: str, challenger: str, reference: str, challenger_scores: list[float | None],
                   reference_scores: list[float | None], *, lower_is_better: bool = False,
                   tie_tolerance: float = 1e-9) -> PairedComparison:
    """Compare two models' per-prompt scores (None where a prompt has no score for either side)."""
    pairs = [(a, b) for a, b in zip(challenger_scores, reference_scores) if a is not None and b is not None]
    deltas = [a - b for a, b in pairs]
    sign = -1 if lower_is_better else 1
    wins = sum(1 for d in deltas if sign * d > tie_tolerance)
    losses = sum(1 for d in deltas if sign * d < -tie_tolerance)
    interval = bootstrap_interval(deltas) if len(deltas) >= MIN_PAIRS else None
    mean = (lambda values: sum(values) / len(values) if values else None)
    return PairedComparison(metric, challenger, reference, len(pairs), wins, losses, len(pairs) - wins - losses,
                            mean([a for a, _ in pairs]), mean([b for _, b in pairs]), mean(deltas), interval,
                            lower_is_better)
