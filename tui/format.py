"""Small text formatters shared by screens (no Textual, no torch)."""

from __future__ import annotations

from engine.config import format_duration  # noqa: F401  (one formatter for engine messages and screens)


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


def format_bytes(count: float | None) -> str:
    """'1.2 GB', '512 MB' or '—'."""
    if count is None:
        return "—"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


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
