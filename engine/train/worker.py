"""The detached training process: `python -m engine.train.worker RUN_DIR [--resume BUNDLE]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Train the run whose resolved config sits in RUN_DIR/config.toml."""
    parser = argparse.ArgumentParser(prog="python -m engine.train.worker")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    from engine.config import load_config
    from engine.errors import LoradeckError
    from engine.library_output import leave_bitsandbytes_unimported, route_library_output
    from engine.run.paths import RunPaths
    from engine.train.launcher import print_progress
    from engine.train.session import run_class_for
    from engine.train.run import run_training

    try:
        config = load_config(RunPaths(Path(args.run_dir)).config)
    except LoradeckError as exc:
        print(f"loradeck worker: {exc}", file=sys.stderr)
        return exc.exit_code
    route_library_output(None)  # this process's stderr is RUN_DIR/trainer.log
    leave_bitsandbytes_unimported(config.model.load_in_4bit)
    return run_training(args.run_dir, config, resume_from=args.resume, run_class=run_class_for(config),
                        progress=print_progress)


if __name__ == "__main__":
    sys.exit(main())
