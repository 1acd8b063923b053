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
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from engine.errors import RunError
from engine.run.paths import STAGING_GLOB, STATE_FILE, staging_path

STATE_FORMAT = "loradeck-checkpoint/2"
# Format 1 (before bundles pinned every file) left these out of its manifest; they are accepted there unlisted.
LEGACY_UNPINNED = ("config.toml", "RESUME.md")
STATE_DIGEST = "state_sha256"
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
    tmp = staging_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def remove_stale_staging(folder: Path) -> int:
    """Delete staging folders and files (a snapshot's temp file) left by killed writers (their pid is gone);
    returns how many."""
    removed = 0
    for tmp in Path(folder).glob(STAGING_GLOB):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_folder(folder: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted one is ever seen: renamed to a staging name first
    (cleaned up by `remove_stale_staging` if the process dies mid-way), then removed."""
    doomed = staging_path(folder)
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


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
                     extra_files: dict[str, Any] | None = None, adapter_state: dict[str, Any] | None = None) -> Path:
    """Save the adapter (PEFT format), `state.json`, `config.toml` and extra torch files into `target`, atomically.

    `extra_files` maps file names to objects saved with `torch.save` (scheduler,
    optimizer or RNG state); `adapter_state` is the adapter's weights when the model's own are shards (FSDP).
    Existing `target` folders are replaced whole.
    """
    import torch

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with building(target) as tmp:
        adapters = getattr(model, "peft_config", None) or {}
        # Only the trained adapter: DPO keeps a frozen reference copy beside it ("ref") that is not the result.
        model.save_pretrained(str(tmp), **({"selected_adapters": ["default"]} if len(adapters) > 1
                                           and "default" in adapters else {}),
                              **({"state_dict": adapter_state} if adapter_state is not None else {}))
        for name, value in (extra_files or {}).items():
            if isinstance(value, str):
                (tmp / name).write_text(value, encoding="utf-8")
            else:
                torch.save(value, tmp / name)
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        write_state(tmp, state, file_manifest(tmp))
    return target


def write_state(folder: Path, state: dict[str, Any], manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write `state.json` last (its presence marks a complete folder): `state` plus the manifest pinning every
    other file, plus a digest of itself so a damaged state.json is caught too."""
    state = {key: value for key, value in state.items() if key != STATE_DIGEST}
    state.update(format=STATE_FORMAT, files=manifest)
    state[STATE_DIGEST] = _state_digest(state)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
    return state


def _state_digest(state: dict[str, Any]) -> str:
    body = {key: value for key, value in state.items() if key != STATE_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file in `folder` (recursively) except state.json."""
    manifest = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != STATE_FILE:
            manifest[relative] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return manifest


def _confined_name(name: Any) -> bool:
    """A manifest name that can only mean a file inside the folder: relative, no `..`, no empty parts."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _present_files(folder: Path) -> list[str]:
    """Every entry under `folder` (relative names); RunError at the first link or special file."""
    names = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise RunError(f"{folder}: {relative} is a symbolic link — a bundle holds plain files only; "
                               "copy it with `cp -rL` or from the machine that wrote it")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise RunError(f"{folder}: {relative} is not a regular file — a bundle holds plain files only")
            names.append(relative)
    return names


def verify_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The state of a complete, uncorrupted checkpoint or bundle; RunError naming the first problem found.

    A bundle comes from another machine, so it is untrusted: state.json must parse and match its own digest;
    every file must be a plain file listed in its manifest (no links, nothing extra such as a weights file
    that would replace the base model's); every listed name must stay inside the folder and match its
    recorded size and SHA-256; the adapter files and config.toml must be there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder — pass a handoff bundle (RUN_DIR/handoff) or a checkpoint")
    state = read_state(folder)
    manifest = state.get("files")
    if not isinstance(manifest, dict) or not manifest:
        raise RunError(f"{folder}: {STATE_FILE} has no file manifest — not a loradeck checkpoint")
    legacy = state.get("format") != STATE_FORMAT
    if not legacy and state.get(STATE_DIGEST) != _state_digest(state):
        raise RunError(f"{folder}: {STATE_FILE} does not match its recorded digest — it was edited or damaged; "
                       "copy the bundle again")
    for name in manifest:
        if not _confined_name(name):
            raise RunError(f"{folder}: the manifest names {name!r}, outside the bundle — refusing it; "
                           "a loradeck bundle only lists its own files")
    for name in _present_files(folder):
        if name == STATE_FILE or name in manifest:
            continue
        if legacy and (name in LEGACY_UNPINNED or name.startswith("data/")):
            continue
        raise RunError(f"{folder}: {name} is not in the bundle's manifest — a loradeck bundle holds nothing "
                       "else (an extra weights file would silently replace the base model's); remove it or "
                       "copy the bundle again")
    if "adapter_config.json" not in manifest:
        raise RunError(f"{folder}: the bundle lists no adapter_config.json — it is partial; use an earlier "
                       "checkpoint")
    if not any(name.startswith("adapter_model.") for name in manifest):
        raise RunError(f"{folder}: the bundle lists no adapter weights — it is partial; use an earlier checkpoint")
    for name, expected in manifest.items():
        path = folder / name
        if not isinstance(expected, dict) or not path.is_file():
            raise RunError(f"{folder}: {name} is missing — the bundle is partial; copy it again or use an "
                           "earlier checkpoint")
        if path.stat().st_size != expected.get("size"):
            raise RunError(f"{folder}: {name} is {path.stat().st_size} bytes, the bundle recorded "
                           f"{expected.get('size')} — truncated copy? copy it again")
        if sha256_file(path) != expected.get("sha256"):
            raise RunError(f"{folder}: {name} does not match its recorded checksum — the file is corrupt or was "
                           "edited; copy the bundle again or use an earlier checkpoint")
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
                        extra_links: dict[str, Path] | None = None,
                        finish: Callable[[Path], None] | None = None, copy: bool = False) -> Path:
    """Atomically make `target` a copy of `source` built from hard links (real copies with `copy`), plus extra
    text files and linked files; `finish(staging_folder)` runs last, before the swap."""
    target = Path(target)
    place = shutil.copy2 if copy else link_or_copy
    with building(target) as tmp:
        for path in Path(source).rglob("*"):
            relative = path.relative_to(source)
            if relative.as_posix() in skip:
                continue
            if path.is_dir():
                (tmp / relative).mkdir(parents=True, exist_ok=True)
            else:
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                place(path, tmp / relative)
        for name, file in (extra_links or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(file, tmp / name)
        for name, text in (extra_text or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if finish is not None:
            finish(tmp)
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

