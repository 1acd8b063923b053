"""Starting training processes detached from the terminal, each owning a run directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from engine import SOURCE_ROOT
from engine.config import RunConfig, save_config
from engine.run.control import prepare_control_dir
from engine.errors import RunError
from engine.run.events import read_events
from engine.run.paths import RunPaths, make_run_dir, private_files
from engine.run.status import trainer_pid


def print_progress(message: str) -> None:
    """A training process's progress line on its stdout; its one-line error (`error: …`) on its stderr, as
    every command's (the run's log, where the launcher sends a process's stderr)."""
    print(message, flush=True, file=sys.stderr if message.startswith("error: ") else sys.stdout)


def processes_exit_line(run_dir: str | Path, code: int) -> str:
    """The one line that says why training processes started in this terminal exited with `code` (non-zero):
    the run's recorded error, or that the run had ended and saved before a process failed, or that it never
    started — with where their output is."""
    from engine.run.status import summarize_run

    paths = RunPaths(Path(run_dir))
    summary = summarize_run(paths.root)
    if summary.status == "failed" and summary.message:
        return summary.message
    if summary.status in ("finished", "stopped", "deadline"):
        return (f"a training process exited with code {code} after the run ended ({summary.status}, step "
                f"{summary.step}; its adapter is saved in {paths.adapter}); its output is in {paths.log_file}")
    return f"the training processes exited with code {code} before the run started; their output is in {paths.log_file}"


def new_run_dir(runs_dir: str | Path, label: str) -> Path:
    """A fresh, unique `runs_dir/<YYYYmmdd-HHMMSS>-<label>` path (not created)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:40] or "run"
    base = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
    candidate, n = base, 2
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def check_run_inputs(config: RunConfig) -> None:
    """Refuse, in one line and before any run directory or process exists, a run whose model, adapter or data
    files are not there (what can be checked without reading them; their contents are the trainer's to refuse)."""
    from engine.data.readers import check_data_source, require_data_path
    from engine.models.adapters import resolve_adapter
    from engine.models.loading import check_model_name

    check_model_name(config.model.name)
    if config.model.adapter:
        resolve_adapter(config.model.adapter)
    require_data_path(config.data.path, config.train.method)
    check_data_source(config.data.path)
    if config.data.eval_path:
        check_data_source(config.data.eval_path)


def prepare_run_dir(run_dir: str | Path, config: RunConfig) -> RunPaths:
    """Create the run directory with its resolved config; refuses a directory with a live trainer or history,
    and a run whose inputs are missing (`check_run_inputs`)."""
    paths = RunPaths(Path(run_dir))
    check_run_inputs(config)
    if trainer_pid(paths.root) is not None:
        raise RunError(f"{run_dir}: a trainer is already running here — attach to it, or pick another --run-dir")
    if paths.events.exists():
        raise RunError(f"{run_dir}: already holds a run — pick another --run-dir, or `loradeck resume "
                       f"{run_dir}/handoff` to continue it")
    with private_files():
        make_run_dir(paths.root)
        try:
            prepare_control_dir(paths)
            save_config(config, paths.config)
        except OSError as exc:
            raise RunError(f"{paths.root}: cannot create the run directory ({exc.strerror or exc}) — pick a "
                           "writable place with --runs-dir or --run-dir") from None
    return paths


def discard_unstarted_run(paths: RunPaths) -> bool:
    """Delete a run directory that no trainer ever wrote to (prepared, then interrupted); True when deleted."""
    import shutil

    if paths.events.exists() or trainer_pid(paths.root) is not None:
        return False
    shutil.rmtree(paths.root, ignore_errors=True)
    return True


def stage_bundle(bundle: str | Path, run_dir: str | Path) -> Path:
    """Copy a verified bundle into `RUN_DIR/resumed-from/`, the copy the new run resumes from (real copies, so
    later edits to the source bundle can never change what this run resumed from)."""
    from engine.train.checkpoint import write_linked_folder

    target = Path(run_dir) / "resumed-from"
    with private_files():
        Path(run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        return write_linked_folder(target, Path(bundle), copy=True)


def launch_detached(run_dir: str | Path, *, resume_from: str | Path | None = None, wait_s: float = 15.0) -> int:
    """Start `python -m engine.train.worker RUN_DIR` in its own session (immune to SSH hang-ups); returns its pid.

    Waits until the worker has written its pid (or died, which becomes a RunError
    quoting the worker's own error).
    """
    from engine.config import load_config
    from engine.train.distributed import launch_command, resolve_processes

    paths = RunPaths(Path(run_dir))
    worker = ["engine.train.worker", str(paths.root)] + (["--resume", str(resume_from)] if resume_from else [])
    processes = resolve_processes(load_config(paths.config).distributed.processes)
    command = launch_command(processes, worker) if processes > 1 else [sys.executable, "-m", *worker]
    with private_files(), open(paths.log_file, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True,
                                   cwd=str(SOURCE_ROOT), env=os.environ.copy())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pid = trainer_pid(paths.root)
        if pid == process.pid or (processes > 1 and pid is not None):  # several: rank 0 writes its own pid
            return pid
        code = process.poll()
        if code is not None:
            errors = [e for e in read_events(paths.events) if e["type"] == "error"]
            reason = errors[-1]["message"] if errors else f"exit code {code}; see {paths.log_file}"
            raise RunError(f"the trainer stopped at once: {reason}")
        time.sleep(0.05)
    return process.pid
