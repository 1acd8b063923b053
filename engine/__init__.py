"""loradeck's headless training engine.

Nothing in this package imports Textual or Rich: the engine runs in detached
training processes, notebooks and scripts, and talks to the world through the
run directory it owns. Heavy libraries (torch, transformers, peft, trl) are
imported inside the functions that need them, so the CLI front door stays fast.

One sub-package per capability, each allowed to import only those below it
(`tests/test_architecture.py` enforces this):

    errors, config      one-line errors for people; the typed run config
    run/                the run directory contract: paths, events, status, history, control, alerts, telemetry
    data/               reading datasets, formats, tokenization and loss mask, inspection, prompt sets
    models/             resolving and loading base models and adapters, backends, the base fingerprint
    chat/               generation over one base copy, the chat worker and its client, blind ratings
    train/              the training process: run, callback, batches, session clock, checkpoints,
                        handoff bundles, preflight, the detached launcher and worker
"""

from pathlib import Path

__version__ = "0.1.0"

# The folder that holds the `engine` package: child processes run `python -m engine.…` from here.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
