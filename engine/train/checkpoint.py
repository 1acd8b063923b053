"""Atomic checkpoints: written to a temp folder, fsynced, then renamed into place.

A reader never sees half an adapter, and a crash at any instant leaves the
previous checkpoint intact. `replace_dir_atomically` swaps a complete new
folder with an existing one in a single `renameat2(RENAME_EXCHANGE)` call where
the kernel supports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.errors import RunError

STATE_FILE = "state.json"
# Files whose content the manifest in state.json does not pin: state.json itself, and the text
# files a handoff bundle rewrites (config with bundle-relative data paths, RESUME.md, data copies).
UNPINNED = ("state.json", "config.toml", "RESUME.md")
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


def remove_stale_staging(folder: Path) -> int:
    """Delete staging folders left by killed writers (their pid is gone); returns how many."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed += 1
    return removed


@contextmanager
def building(target: Path):
    """Yield a staging folder for `target`; on success fsync it and swap it in atomically, else discard it."""
    tmp = staging_dir(target)
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_dir_atomically(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_checkpoint(target: Path, *, model, state: dict[str, Any], config_toml: str,
                     extra_files: dict[str, Any] | None = None) -> Path:
    """Save the adapter (PEFT format), `state.json`, `config.toml` and extra torch files into `target`, atomically.

    `extra_files` maps file names to objects saved with `torch.save` (scheduler,
    optimizer or RNG state). Existing `target` folders are replaced whole.
    """
    import torch

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with building(target) as tmp:
        model.save_pretrained(str(tmp))
        for name, value in (extra_files or {}).items():
            if isinstance(value, str):
                (tmp / name).write_text(value, encoding="utf-8")
            else:
                torch.save(value, tmp / name)
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        # state.json goes last: its presence marks a complete checkpoint, its manifest pins the rest.
        state = {**state, "files": file_manifest(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
    return target


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file in `folder` (recursively) except the unpinned ones and data copies."""
    manifest = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in UNPINNED and not relative.startswith("data/"):
            manifest[relative] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return manifest


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The state of a complete, uncorrupted checkpoint or bundle; RunError naming the first problem found.

    Checks that state.json parses, that every file its manifest lists exists with
    the recorded size and hash, and that the adapter files are present.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder — pass a handoff bundle (RUN_DIR/handoff) or a checkpoint")
    state = read_state(folder)
    manifest = state.get("files")
    if not isinstance(manifest, dict) or not manifest:
        raise RunError(f"{folder}: {STATE_FILE} has no file manifest — not a loradeck checkpoint")
    for name in ("adapter_config.json",):
        if name not in manifest:
            raise RunError(f"{folder}: the bundle lists no {name} — it is partial; use an earlier checkpoint")
    if not any(name.startswith("adapter_model.") for name in manifest):
        raise RunError(f"{folder}: the bundle lists no adapter weights — it is partial; use an earlier checkpoint")
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            raise RunError(f"{folder}: {name} is missing — the bundle is partial; copy it again or use an "
                           "earlier checkpoint")
        if path.stat().st_size != expected.get("size"):
            raise RunError(f"{folder}: {name} is {path.stat().st_size} bytes, the bundle recorded "
                           f"{expected.get('size')} — truncated copy? copy it again")
        if sha256_file(path) != expected.get("sha256"):
            raise RunError(f"{folder}: {name} does not match its recorded checksum — the file is corrupt; "
                           "copy the bundle again or use an earlier checkpoint")
    if not (folder / "config.toml").is_file():
        raise RunError(f"{folder}: config.toml is missing — the bundle is partial; copy it again")
    return state


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (checkpoint files are never modified in place), copying across filesystems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_linked_folder(target: Path, source: Path, *, skip: tuple[str, ...] = (),
                        extra_text: dict[str, str] | None = None,
                        extra_links: dict[str, Path] | None = None) -> Path:
    """Atomically make `target` a copy of `source` built from hard links, plus extra text files and linked files."""
    target = Path(target)
    with building(target) as tmp:
        for path in Path(source).rglob("*"):
            relative = path.relative_to(source)
            if relative.as_posix() in skip:
                continue
            if path.is_dir():
                (tmp / relative).mkdir(parents=True, exist_ok=True)
            else:
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, tmp / relative)
        for name, file in (extra_links or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(file, tmp / name)
        for name, text in (extra_text or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
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
