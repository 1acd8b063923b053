"""Small text formatters shared by screens (no Textual, no torch)."""

from __future__ import annotations

import re

from engine.config import format_bytes, format_duration  # noqa: F401  (one formatter each, engine and screens)


def format_number(value: float | None, digits: int = 4) -> str:
    """A compact number, or '—' when missing; non-finite losses arrive as text ("nan", "inf")."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if value != value:  # NaN
        return "NaN"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def short_path(path: str | None) -> str:
    """A path relative to the working directory when it lies below it, else as given."""
    import os

    if not path:
        return "—"
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def theme_rgb(colour: str | None):
    """A theme colour as the (r, g, b) tuple plotext takes, None when the theme lacks it."""
    from textual.color import Color

    return Color.parse(colour).rgb if colour else None


def format_share(value: float | None) -> str:
    """A 0–1 share as a percentage ('15.6%', '6%'), '—' when unknown (MFU off a GPU of known peak)."""
    if value is None:
        return "—"
    percent = value * 100
    return f"{percent:.1f}%" if percent < 10 else f"{percent:.0f}%"


def one_line(text: str, width: int) -> str:
    """`text` on one line (runs of whitespace, newlines included, become one space), cut to `width` with '…'."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


RUN_STAMP = re.compile(r"^(\d{8})-(\d{6})-")


def run_labels(run_ids: list[str], width: int = 20) -> list[str]:
    """Short, distinct names for runs shown side by side: the time stamp dropped (`20261124-233012-my-run` →
    `my-run`), kept as HHMMSS where two names would otherwise be the same, and a long name shortened in the
    middle so both its start and its end survive."""
    bare = [RUN_STAMP.sub("", run_id) or run_id for run_id in run_ids]
    labels = []
    for run_id, name in zip(run_ids, bare):
        stamp = RUN_STAMP.match(run_id)
        if bare.count(name) > 1 and stamp:
            name = f"{stamp.group(2)}-{name}"
        if len(name) > width:
            keep = width - 1
            name = name[:(keep + 1) // 2] + "…" + name[len(name) - keep // 2:]
        labels.append(name)
    return labels


def integer_ticks(low: float, high: float, count: int = 5) -> list[int]:
    """Up to `count` whole-number ticks from `low` to `high` (steps are counted, never 24.8)."""
    low, high = int(low), int(round(high))
    if high <= low:
        return [low]
    step = max(1, round((high - low) / (count - 1)))
    ticks = list(range(low, high + 1, step))
    if ticks[-1] != high and high - ticks[-1] < step / 2:
        ticks[-1] = high
    elif ticks[-1] != high:
        ticks.append(high)
    return ticks


def format_used_of(used: float | None, total: float | None) -> str:
    """'2.0/25.3 GB' (one unit when both share it), else '512 MB/25.3 GB'."""
    used_text, total_text = format_bytes(used), format_bytes(total)
    used_number, _, used_unit = used_text.partition(" ")
    if used_unit and used_unit == total_text.partition(" ")[2]:
        return f"{used_number}/{total_text}"
    return f"{used_text}/{total_text}"
