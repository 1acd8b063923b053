"""Blind A/B rating: shuffle two models' answers, record the verdict, and say honestly who wins.

Every verdict goes to `ratings.jsonl` (both answers, which model was on which
side, the settings). Decisive verdicts also go to `preferences.jsonl` as
`prompt` / `chosen` / `rejected` in TRL's conversational preference format, so
the file trains DPO as it is. The tally counts wins of one model over another
and gives a 95% Wilson interval for its win rate over decided prompts; only an
interval that excludes 50% is called a difference.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import LoradeckError, RunError

VERDICTS = ("left", "right", "tie", "both_bad")
RATINGS_FILE = "ratings.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
Z_95 = 1.959964


def blind_sides(labels: tuple[str, str], rng: random.Random) -> tuple[str, str]:
    """The two labels in a random (left, right) order."""
    left, right = labels
    return (right, left) if rng.random() < 0.5 else (left, right)


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion (0, 1 when there are no trials)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - spread), min(1.0, centre + spread)


@dataclass
class Tally:
    """How `challenger` fared against `reference` over the rated prompts."""

    challenger: str
    reference: str
    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def rated(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.decided if self.decided else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins, self.decided)

    def more_needed(self) -> int | None:
        """Decided prompts still needed, at the current win rate, for the interval to exclude 50% (None if it
        never would: the rate is exactly 50%, or more than 500 are needed)."""
        rate = self.win_rate
        if rate is None or rate == 0.5:
            return None
        for extra in range(0, 501):
            trials = self.decided + extra
            low, high = wilson_interval(rate * trials, trials)
            if low > 0.5 or high < 0.5:
                return extra
        return None

    def verdict(self) -> str:
        """One honest sentence: better, worse, or not distinguishable yet."""
        if not self.rated:
            return "no ratings yet"
        if not self.decided:
            return f"no decided prompts yet ({self.ties} ties, {self.both_bad} both bad)"
        low, high = self.interval
        if low > 0.5:
            return f"{self.challenger} is better than {self.reference} (95% interval above 50%)"
        if high < 0.5:
            return f"{self.challenger} is worse than {self.reference} (95% interval below 50%)"
        needed = self.more_needed()
        hint = (f"; about {needed} more decided prompt{'s' if needed != 1 else ''} at this rate would settle it"
                if needed else "")
        return f"no clear difference yet: the 95% interval includes 50%{hint}"

    def summary(self) -> str:
        """Counts, win rate with interval, and the verdict, on two lines."""
        counts = (f"{self.challenger} wins {self.wins} · {self.reference} wins {self.losses} · ties {self.ties} · "
                  f"both bad {self.both_bad}")
        if self.win_rate is None:
            return f"{counts}\n{self.verdict()}"
        low, high = self.interval
        return (f"{counts}\n{self.challenger} preferred in {self.win_rate:.0%} of {self.decided} decided "
                f"(95% CI {low:.0%}–{high:.0%}) — {self.verdict()}")

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"challenger": self.challenger, "reference": self.reference, "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "both_bad": self.both_bad, "win_rate": self.win_rate,
                "interval": [low, high], "verdict": self.verdict()}


def tally(rows: list[dict[str, Any]], challenger: str, reference: str) -> Tally:
    """Count the ratings that compared exactly these two labels."""
    result = Tally(challenger, reference)
    for row in rows:
        sides = {row.get("left_label"), row.get("right_label")}
        if sides != {challenger, reference}:
            continue
        verdict = row.get("verdict")
        if verdict == "tie":
            result.ties += 1
        elif verdict == "both_bad":
            result.both_bad += 1
        elif verdict in ("left", "right"):
            winner = row["left_label"] if verdict == "left" else row["right_label"]
            if winner == challenger:
                result.wins += 1
            else:
                result.losses += 1
    return result


class RatingLog:
    """`ratings.jsonl` and `preferences.jsonl` in one folder (a run's `chat/`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.ratings_path = self.folder / RATINGS_FILE
        self.preferences_path = self.folder / PREFERENCES_FILE

    def record(self, messages: list[dict[str, str]], left: tuple[str, str], right: tuple[str, str], verdict: str,
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one verdict; `left`/`right` are (label, answer). Decisive verdicts also become a preference."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
        (left_label, left_answer), (right_label, right_answer) = left, right
        row = {"ts": round(time.time(), 3), "prompt": messages, "left_label": left_label, "left": left_answer,
               "right_label": right_label, "right": right_answer, "verdict": verdict,
               "winner": {"left": left_label, "right": right_label}.get(verdict), "settings": settings or {}}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _append(self.ratings_path, row)
            if verdict in ("left", "right"):
                chosen, rejected = (left, right) if verdict == "left" else (right, left)
                _append(self.preferences_path, {
                    "prompt": messages, "chosen": [{"role": "assistant", "content": chosen[1]}],
                    "rejected": [{"role": "assistant", "content": rejected[1]}],
                    "chosen_model": chosen[0], "rejected_model": rejected[0]})
        except OSError as exc:
            raise RunError(f"cannot save the rating in {self.folder}: {exc.strerror or exc} — check the folder's "
                           "permissions and free space") from None
        return row

    def rows(self) -> list[dict[str, Any]]:
        """Every recorded verdict (unreadable lines are skipped)."""
        if not self.ratings_path.is_file():
            return []
        rows = []
        for line in self.ratings_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()


@dataclass
class RateAgain:
    """A DPO run rated again, blind, against the adapter it started from, on the prompts rated before."""

    run: Path  # the DPO run
    starting: Path  # the adapter it continued: its run directory when it came from one, else the run's copy
    prompts: list  # PromptItems: the prompts rated before, else the starting run's held-out prompts
    before: Tally | None  # the starting adapter against the base, from the ratings that fed DPO


def rate_again_plan(run_dir: str | Path) -> RateAgain | None:
    """What "rate again" needs for a DPO run that continued an adapter; None for any other run."""
    import tomllib

    from engine.data.prompts import PromptItem, held_out_prompts
    from engine.models.adapters import resolve_adapter, run_dir_of

    run = Path(run_dir)
    try:
        config = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    start = str((config.get("model") or {}).get("adapter") or "")
    if (config.get("train") or {}).get("method") != "dpo" or not start:
        return None
    try:
        starting_adapter = resolve_adapter(start)
    except LoradeckError:  # moved or deleted since: the run's own copy of it
        starting_adapter = None
    if starting_adapter is None and (run / "reference" / "adapter_config.json").is_file():
        starting_adapter = run / "reference"
    if starting_adapter is None:
        return None
    starting_run = run_dir_of(starting_adapter)
    rows = RatingLog(starting_run / "chat").rows() if starting_run else []
    labels = Counter(label for row in rows for label in (row.get("left_label"), row.get("right_label"))
                     if label and label != "base")
    before = tally(rows, labels.most_common(1)[0][0], "base") if labels else None
    prompts, seen = [], set()
    for row in rows:
        messages = row.get("prompt")
        key = json.dumps(messages, sort_keys=True)
        if isinstance(messages, list) and messages and key not in seen:
            seen.add(key)
            prompts.append(PromptItem(messages, None, str(starting_run / "chat" / RATINGS_FILE)))
    if not prompts and starting_run is not None:
        try:
            prompts = held_out_prompts(starting_run)
        except LoradeckError:  # no held-out prompts: the user types or loads some (F3)
            prompts = []
    return RateAgain(run, starting_run or starting_adapter, prompts, before)
