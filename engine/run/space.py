"""Disk space for a run: a small reserve that guarantees the last words, and the one test for "the disk is full".

A trainer that fills the disk must still be able to say so: it keeps
`RESERVE_BYTES` of real (not sparse) zeros in `.space-reserve` and deletes them
the moment a write fails for lack of space, so the warning or error event
explaining what happened always fits.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

RESERVE_BYTES = 1 << 20
RESERVE_NAME = ".space-reserve"
NEARLY_FULL_BYTES = 16 << 20  # after a failed write, less free space than this means the disk was the cause
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_PHRASES = ("no space left", "os error 28", "disk quota", "file write failed")


def free_bytes(folder: str | Path) -> int:
    """Bytes free to an unprivileged writer on the filesystem holding `folder`."""
    return shutil.disk_usage(folder).free


def folder_bytes(folder: str | Path) -> int:
    """Bytes the regular files under `folder` take (links counted once per name)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def is_disk_full(exc: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `exc` (an OSError, or a library's own error wrapping one) means the disk or quota is full."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if any(phrase in str(seen).lower() for phrase in _FULL_PHRASES):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None:
        try:
            return free_bytes(folder) < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


class SpaceReserve:
    """`RESERVE_BYTES` held in the run directory so the trainer's last events always fit on a full disk."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / RESERVE_NAME

    def hold(self) -> bool:
        """Write the reserve (real blocks, not a sparse file); False when there is no room even for that."""
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                block = b"\0" * 65536
                for _ in range(RESERVE_BYTES // len(block)):
                    os.write(descriptor, block)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            return True
        except OSError:
            self.release()
            return False

    def release(self) -> bool:
        """Give the reserve back to the disk; True when there was one to give."""
        try:
            self.path.unlink()
            return True
        except OSError:
            return False
