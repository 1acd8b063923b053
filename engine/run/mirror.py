"""What marks a run directory as the mirror of a run on another machine (`engine.run.remote` keeps it current):
`remote.json` (host, path, the remote trainer's pid as last heard, the connection's state) and `outbox/` (control
commands waiting to be carried to the remote run). The status and control rules read these; they import nothing
else of the run layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REMOTE_FILE = "remote.json"
OUTBOX = "outbox"


def read_remote(run_dir: str | Path) -> dict[str, Any] | None:
    """A mirror's `remote.json`, or None for a local run (or a damaged file)."""
    try:
        data = json.loads((Path(run_dir) / REMOTE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remote_pid(run_dir: str | Path) -> int | None:
    """The remote trainer's pid as last heard (kept while reconnecting: not heard is not dead)."""
    data = read_remote(run_dir) or {}
    pid = data.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None
