"""The layout of a run directory, and where the data files a run recorded are found.

```
runs/<run-id>/
  config.toml        resolved config, written once at start
  events.jsonl       append-only event log
  summary.json       the run's summary folded up to a byte offset of the log (status reads only what follows)
  control/           commands from clients (mode 0700)
  data/              private copies of small data files (train.jsonl, eval.jsonl) that bundles link to
  checkpoints/step-000120/   adapter + state.json, renamed into place whole
  handoff/           newest complete resume bundle
  adapter/           the final adapter (PEFT format)
  chat/              blind A/B ratings (ratings.jsonl) and the preferences they make (preferences.jsonl)
  eval/<time>/       before/after reports: report.md, report.json, answers.jsonl
  trainer.pid        the live trainer's pid
  trainer.lock       held (flock) by the live trainer for its whole life; holds its pid
  trainer.log        the detached trainer's own output
```
"""

from __future__ import annotations

import os
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import RunError


@dataclass(frozen=True)
class RunPaths:
    """Every path inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def handoff(self) -> Path:
        return self.root / "handoff"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def chat(self) -> Path:
        return self.root / "chat"

    @property
    def eval_reports(self) -> Path:
        return self.root / "eval"

    @property
    def pid_file(self) -> Path:
        return self.root / "trainer.pid"

    @property
    def lock_file(self) -> Path:
        return self.root / "trainer.lock"

    @property
    def log_file(self) -> Path:
        return self.root / "trainer.log"


STATE_FILE = "state.json"  # a checkpoint's last file: present means complete


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint folders holding a state.json, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    return sorted(p for p in checkpoints_dir.glob("step-*") if (p / STATE_FILE).is_file())


PRIVATE_UMASK = 0o077


@contextmanager
def private_files():
    """Within the block, new files and folders are the user's alone (0600 / 0700): adapters, data copies and
    logs are often confidential."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


STAGING_GLOB = ".*.tmp-*"


def staging_path(target: Path) -> Path:
    """The hidden name beside `target` under which this process builds its replacement or removes it
    (`.NAME.tmp-PID`); `remove_stale_staging` deletes those whose process is gone."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def make_run_dir(root: Path) -> None:
    """Create a run directory, private to the user; RunError in one line when the path is not UTF-8 or cannot
    be created (a read-only or missing parent)."""
    require_utf8_path(root)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{root}: cannot create the run directory ({exc.strerror or exc}) — pick a writable "
                       "place with --runs-dir or --run-dir") from None


def require_utf8_path(path: Path) -> None:
    """RunError for a path that is not valid UTF-8: the model libraries cannot save into it."""
    try:
        str(path.absolute()).encode("utf-8")
    except UnicodeEncodeError:
        raise RunError(f"{os.fsdecode(os.fsencode(path))!r}: the run directory's path is not valid UTF-8 — the "
                       "model libraries cannot save there; pick a name in UTF-8") from None


def require_run_dir(path: str | Path) -> RunPaths:
    """RunPaths for `path`, or a RunError saying why it is not a run directory."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise RunError(f"{path}: no such run directory")
    paths = RunPaths(root)
    if not paths.events.is_file() and not paths.config.is_file():
        raise RunError(f"{path}: not a run directory (no events.jsonl or config.toml) — pass runs/<run-id>")
    return paths


def run_data_path(run_dir: str | Path, value: str) -> Path | None:
    """A data path recorded in a run's config, resolved: absolute as written, else relative to the run directory,
    else to the working directory. None when the value is empty or no such file exists."""
    if not value:
        return None
    candidate = Path(value).expanduser()
    for path in ([candidate] if candidate.is_absolute() else [Path(run_dir) / candidate, Path.cwd() / candidate]):
        if path.exists():
            return path
    return None


def recorded_data_path(run_dir: str | Path, key: str = "path") -> Path | None:
    """The run's `data.<key>` (path or eval_path) resolved by `run_data_path`; None when unset, missing or the
    config is unreadable."""
    try:
        data = tomllib.loads(RunPaths(Path(run_dir)).config.read_text(encoding="utf-8")).get("data", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return run_data_path(run_dir, value) if isinstance(value, str) else None
