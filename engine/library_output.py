"""Third-party chatter stays off the person's terminal: library warnings and log lines go to a log file.

transformers, peft, bitsandbytes, trl, datasets and torch report through Python's
`logging` and `warnings`. With nothing configured, Python prints every WARNING
to stderr, so a one-line error became two lines on CPUs where bitsandbytes
announces a missing optional kernel at import. `route_library_output` sends all
of it to one place — the run's log, a log in the cache folder, or stderr with
`--debug` — and `settle_library_loggers` takes over the handlers that
transformers and datasets attach to stderr themselves once they are imported.
loradeck's own progress lines are printed directly and never pass through here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

LIBRARY_LOGGERS = ("transformers", "datasets")  # libraries that attach their own stderr handler
_HANDLER_NAME = "loradeck-library-output"
_routed = False
_destination: Path | None = None  # the routed log file; None: stderr (unrouted or --debug)


def default_log_file() -> Path:
    """Where a CLI command's library output goes: `$XDG_CACHE_HOME/loradeck/loradeck.log`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "loradeck" / "loradeck.log"


def route_library_output(log_file: str | Path | None = None, *, debug: bool = False) -> None:
    """Send every library warning and log line to `log_file` (appended; stderr when None or `debug`).

    Idempotent: a later call replaces the earlier destination (a foreground run moves it into its run log).
    """
    global _routed, _destination
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    handler: logging.Handler
    _destination = None if debug or log_file is None else Path(log_file)
    if debug or log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        path = Path(log_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        except OSError:  # an unwritable cache folder must not cost the command: drop the chatter instead
            handler = logging.NullHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    warnings.simplefilter("default")  # each distinct warning once per place, into the log
    _routed = True
    settle_library_loggers()


def library_output_routed() -> bool:
    """Whether this process routes library output (the CLI, the trainer and the chat worker do)."""
    return _routed


@contextlib.contextmanager
def library_stderr():
    """Inside this block, whatever libraries write straight to stderr (progress bars that no logging setting
    reaches, such as transformers' GGUF de-quantization bar) goes to the routed log instead; a no-op when output
    is not routed or `--debug` shows it."""
    if _destination is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(_destination, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def settle_library_loggers() -> None:
    """Make already-imported libraries with stderr handlers of their own log through the routed handler instead.

    Call after importing transformers or datasets (model and data loading do); a no-op before routing.
    """
    if not _routed:
        return
    for name in LIBRARY_LOGGERS:
        if name not in sys.modules:
            continue
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def leave_bitsandbytes_unimported(load_in_4bit: bool = False) -> bool:
    """Keep bitsandbytes out of a process that will load no 4-bit weights (a no-op when `load_in_4bit`); returns
    whether it is kept out.

    peft imports bitsandbytes whenever it is installed, and on CPUs with AVX-512 BF16 bitsandbytes logs a
    warning at import; importing it also costs time. Call this at a process's entry point with the config's
    4-bit setting, before peft is imported: marking the module absent makes every "is bitsandbytes
    available?" check answer no. Too late (already imported) is a no-op.
    """
    if not load_in_4bit and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import machinery's "known absent"
    return "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None
