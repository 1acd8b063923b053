"""The control channel: clients drop command files into `RUN_DIR/control/`, the trainer picks them up.

The folder is mode 0700 and the trainer only obeys files owned by its own user,
so only the owning user can stop, save or extend a run. A command is written to
a hidden temp name and renamed, so the trainer never reads half a command.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import time
from pathlib import Path
from typing import Any

from engine.config import MAX_DURATION_S
from engine.errors import RunError
from engine.run.paths import RunPaths, require_run_dir
from engine.run.status import trainer_pid

COMMANDS = ("stop", "save", "extend")
COMMAND_FILE_LIMIT = 4096  # bytes; a command is a few dozen


def check_command(payload: Any) -> dict[str, Any]:
    """A command as the trainer may obey it, or ValueError saying why not (used by sender and trainer alike)."""
    if not isinstance(payload, dict) or payload.get("command") not in COMMANDS:
        raise ValueError(f"not a command (expected an object with \"command\" one of {', '.join(COMMANDS)})")
    if payload["command"] == "extend":
        seconds = payload.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError("extend needs \"seconds\" as a number")
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_DURATION_S:
            raise ValueError(f"extend by {seconds!r} seconds refused: give a positive, finite duration up to "
                             f"{MAX_DURATION_S // 86400:.0f} days")
    return payload


def prepare_control_dir(paths: RunPaths) -> None:
    """Create the control folder owner-only (0700), tightening it if it exists."""
    paths.control.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.control, 0o700)


def send_command(run_dir: str | Path, command: str, **arguments: Any) -> Path:
    """Queue a command for a live trainer; RunError when the run is not running or not ours."""
    try:
        payload = check_command({"command": command, **arguments})
    except ValueError as exc:
        raise RunError(f"{command}: {exc}") from None
    paths = require_run_dir(run_dir)
    if trainer_pid(paths.root) is None:
        raise RunError(f"{run_dir}: no trainer is running for this run (finished, stopped or killed) — "
                       "nothing to send")
    from engine.run.mirror import OUTBOX, read_remote

    if read_remote(paths.root) is not None:  # a mirror: the follower carries it to the remote run
        folder = paths.root / OUTBOX
        folder.mkdir(mode=0o700, exist_ok=True)
        return _write_command(folder, command, payload)
    if not paths.control.is_dir():
        raise RunError(f"{run_dir}: no control folder — the run is not accepting commands")
    if paths.control.stat().st_uid != os.getuid():
        raise RunError(f"{run_dir}: the run belongs to another user — only its owner can control it")
    return _write_command(paths.control, command, {**payload, "ts": time.time()})


def _write_command(folder: Path, command: str, payload: dict[str, Any]) -> Path:
    """One command file, appearing whole (written aside, then renamed), named so files sort in arrival order."""
    stamp = f"{time.time():.6f}-{os.getpid()}"
    tmp = folder / f".{stamp}-{command}.tmp"
    tmp.write_text(json.dumps(payload))
    return tmp.rename(folder / f"{stamp}-{command}.json")


def take_commands(paths: RunPaths) -> tuple[list[dict[str, Any]], list[str]]:
    """Read and delete pending commands in arrival order (trainer side): (commands to obey, why others were
    refused). Files of other users are ignored; a malformed command is refused, never fatal."""
    if not paths.control.is_dir():
        return [], []
    commands, refused = [], []
    for file in sorted(paths.control.glob("*.json")):
        payload, owner = None, None
        try:
            info = os.lstat(file)
            owner = info.st_uid
            if stat.S_ISREG(info.st_mode):
                # never follow a link, never wait on a writer, never read more than a command can be
                handle = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    raw = os.read(handle, COMMAND_FILE_LIMIT + 1)
                finally:
                    os.close(handle)
                payload = json.loads(raw) if len(raw) <= COMMAND_FILE_LIMIT else None
            if stat.S_ISDIR(info.st_mode):
                file.rmdir()
            else:
                file.unlink(missing_ok=True)
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                file.unlink(missing_ok=True)
        if owner != os.getuid():
            continue
        try:
            commands.append(check_command(payload))
        except ValueError as exc:
            refused.append(f"control/{file.name}: {exc}")
    return commands, refused
