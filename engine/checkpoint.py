"""Atomic checkpoints: written to a temp folder, fsynced, then renamed into place.

A reader never sees half an adapter, and a crash at any instant leaves the
previous checkpoint intact. `replace_dir_atomically` swaps a complete new
folder with an existing one in a single `renameat2(RENAME_EXCHANGE)` call where
the kernel supports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from engine.errors import RunError

STATE_FILE = "state.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def replace_dir_atomically(new: Path, target: Path) -> None:
    """Make `target` the complete folder `new`, never leaving a reader without a complete folder."""
    if not target.exists():
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # `new` now holds the previous contents
        return
    # No renameat2: move the old folder aside first; readers fall back to `<target>.old`.
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def staging_dir(target: Path) -> Path:
    """A fresh hidden temp folder beside `target` for building its replacement."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_checkpoint(target: Path, *, model, state: dict[str, Any], config_toml: str,
                     extra_files: dict[str, Any] | None = None) -> Path:
    """Save the adapter (PEFT format), `state.json`, `config.toml` and extra torch files into `target`, atomically.

    `extra_files` maps file names to objects saved with `torch.save` (scheduler,
    optimizer or RNG state). Existing `target` folders are replaced whole.
    """
    import torch

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(target)
    try:
        model.save_pretrained(str(tmp))
        for name, value in (extra_files or {}).items():
            if isinstance(value, str):
                (tmp / name).write_text(value, encoding="utf-8")
            else:
                torch.save(value, tmp / name)
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        # state.json goes last: its presence marks a complete checkpoint.
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
        _fsync_tree(tmp)
        replace_dir_atomically(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_state(folder: str | Path) -> dict[str, Any]:
    """The `state.json` of a complete checkpoint or bundle; RunError when missing or corrupt."""
    path = Path(folder) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{folder}: not a complete checkpoint (no {STATE_FILE}) — it may be partial; use an "
                       "earlier one") from None
    except ValueError:
        raise RunError(f"{folder}: {STATE_FILE} is corrupt — use an earlier checkpoint") from None


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint folders holding a state.json, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    return sorted(p for p in checkpoints_dir.glob("step-*") if (p / STATE_FILE).is_file())
