"""The control channel: clients drop command files into `RUN_DIR/control/`, the trainer picks them up.

The folder is mode 0700 and the trainer only obeys files owned by its own user,
so only the owning user can stop, save or extend a run. A command is written to
a hidden temp name and renamed, so the trainer never reads half a command.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from engine.errors import RunError
from engine.run.status import RunPaths, require_run_dir, trainer_pid

COMMANDS = ("stop", "save", "extend")


def prepare_control_dir(paths: RunPaths) -> None:
    """Create the control folder owner-only (0700), tightening it if it exists."""
    paths.control.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.control, 0o700)


def send_command(run_dir: str | Path, command: str, **arguments: Any) -> Path:
    """Queue a command for a live trainer; RunError when the run is not running or not ours."""
    if command not in COMMANDS:
        raise RunError(f"unknown command '{command}' — use one of {', '.join(COMMANDS)}")
    paths = require_run_dir(run_dir)
    if trainer_pid(paths.root) is None:
        raise RunError(f"{run_dir}: no trainer is running for this run (finished, stopped or killed) — "
                       "nothing to send")
    if not paths.control.is_dir():
        raise RunError(f"{run_dir}: no control folder — the run is not accepting commands")
    if paths.control.stat().st_uid != os.getuid():
        raise RunError(f"{run_dir}: the run belongs to another user — only its owner can control it")
    stamp = f"{time.time():.6f}-{os.getpid()}"
    final = paths.control / f"{stamp}-{command}.json"
    tmp = paths.control / f".{stamp}-{command}.tmp"
    tmp.write_text(json.dumps({"command": command, "ts": time.time(), **arguments}))
    tmp.rename(final)
    return final


def take_commands(paths: RunPaths) -> list[dict[str, Any]]:
    """Read and delete pending commands in arrival order (trainer side); ignores files of other users."""
    if not paths.control.is_dir():
        return []
    commands = []
    for file in sorted(paths.control.glob("*.json")):
        try:
            owner = file.stat().st_uid
            payload = json.loads(file.read_text())
        except (OSError, ValueError):
            payload, owner = None, None
        file.unlink(missing_ok=True)
        if owner == os.getuid() and isinstance(payload, dict) and payload.get("command") in COMMANDS:
            commands.append(payload)
    return commands
