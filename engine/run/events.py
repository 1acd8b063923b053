"""The run's `events.jsonl`: append-only, one flushed JSON object a line.

Every event carries `v` (schema version), `ts` (unix seconds), `type`, and
`step` where it applies. Writers append; readers tail from a byte offset and
never re-read what they already have.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
EVENT_TYPES = ("started", "model_loaded", "step", "eval", "telemetry", "checkpoint", "sample", "deadline",
               "warning", "finished", "error", "control")


class EventWriter:
    """Appends events to `events.jsonl`, one flushed line each."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Append one event and flush it, so a reader sees whole lines only."""
        event = {"v": SCHEMA_VERSION, "ts": round(time.time(), 3), "type": event_type, **fields}
        self._handle.write(json.dumps(event, separators=(",", ":"), default=_jsonable) + "\n")
        self._handle.flush()
        return event

    def sync(self) -> None:
        """Force the log to disk (after a checkpoint, before exit)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Flush and close the log."""
        if not self._handle.closed:
            self._handle.flush()
            self._handle.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


class EventTail:
    """Reads events appended since the last call, keeping a byte offset.

    A partial last line (a writer mid-append) is left for the next call; a line
    that is not valid JSON is skipped and counted in `bad_lines`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.bad_lines = 0

    def read_new(self, limit_bytes: int | None = None) -> list[dict[str, Any]]:
        """Every complete event appended since the previous call (up to `limit_bytes` of log)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read() if limit_bytes is None else handle.read(limit_bytes)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events = []
        for line in chunk[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(event, dict) and "type" in event:
                events.append(event)
            else:
                self.bad_lines += 1
        return events


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every event in a log, in order."""
    return EventTail(path).read_new()
