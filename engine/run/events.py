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
from typing import Any, Callable, Iterator

SCHEMA_VERSION = 1
EVENT_TYPES = ("started", "model_loaded", "step", "eval", "telemetry", "checkpoint", "sample", "deadline",
               "warning", "finished", "error", "control", "eval_report")


class EventWriter:
    """Appends events to `events.jsonl`, one flushed line each.

    `observer(event, offset)` is called after each append with the log's size after it (the run's summary
    snapshot follows the log this way). A write the disk has no room for is cut back to the last whole line;
    `on_full()` is then asked to free room (the run's space reserve) and the write is tried once more.
    """

    def __init__(self, path: str | Path, observer: Callable[[dict[str, Any], int], None] | None = None,
                 on_full: Callable[[], bool] | None = None, common: dict[str, Any] | None = None):
        self.path = Path(path)
        self.common = dict(common or {})  # fields every event carries (world_size of a multi-process run)
        self._descriptor: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.offset = os.fstat(self._descriptor).st_size
        self.observer = observer
        self.on_full = on_full

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Append one event as one whole line, so a reader never sees part of it."""
        event = {"v": SCHEMA_VERSION, "ts": round(time.time(), 3), "type": event_type, **self.common, **fields}
        line = (json.dumps(event, separators=(",", ":"), default=_jsonable) + "\n").encode()
        try:
            self._append(line)
        except OSError:
            if self.on_full is None or not self.on_full():
                raise
            self._append(line)
        if self.observer is not None:
            self.observer(event, self.offset)
        return event

    def _append(self, line: bytes) -> None:
        written = 0
        try:
            while written < len(line):
                written += os.write(self._descriptor, line[written:])
        except OSError:
            if written:
                try:
                    os.ftruncate(self._descriptor, self.offset)
                except OSError:
                    pass
            raise
        self.offset += len(line)

    def sync(self) -> None:
        """Force the log to disk (after a checkpoint, before exit)."""
        if self._descriptor is not None:
            os.fsync(self._descriptor)

    def close(self) -> None:
        """Close the log (every line is already written)."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


class EventTail:
    """Reads events appended since the last call, keeping a byte offset.

    A partial last line (a writer mid-append) is left for the next call; a line
    that is not valid JSON is skipped and counted in `bad_lines`, and so is a line
    longer than a whole read (`limit_bytes`), which is never held in memory.
    """

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self.bad_lines = 0
        self._skipping = False  # inside an over-long line: drop bytes up to its end

    def size(self) -> int:
        """The log's current size in bytes (0 when it does not exist yet)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def behind(self) -> int:
        """Bytes of log not read yet."""
        return max(0, self.size() - self.offset)

    def read_new(self, limit_bytes: int | None = None) -> list[dict[str, Any]]:
        """Every complete event appended since the previous call (up to `limit_bytes` of log)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read() if limit_bytes is None else handle.read(limit_bytes)
        except FileNotFoundError:
            return []
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                self.offset += len(chunk)
                return []
            self._skipping = False
            self.offset += newline + 1
            chunk = chunk[newline + 1:]
        end = chunk.rfind(b"\n")
        if end < 0:
            if limit_bytes is not None and len(chunk) >= limit_bytes:
                self.bad_lines += 1
                self._skipping = True
                self.offset += len(chunk)
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


READ_CHUNK = 8 << 20


def drain(tail: EventTail) -> Iterator[dict[str, Any]]:
    """Every complete event `tail` has not read yet, read in bounded chunks (memory stays small on a huge log);
    afterwards `tail.offset` is where the complete lines end."""
    while True:
        before = tail.offset
        yield from tail.read_new(READ_CHUNK)
        if tail.offset == before:
            return


def iter_events(path: str | Path, offset: int = 0) -> Iterator[dict[str, Any]]:
    """Every complete event from `offset` on, read in bounded chunks."""
    return drain(EventTail(path, offset))


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every event in a log, in order."""
    return list(iter_events(path))
