"""The `loradeck` command: the parser, the dispatch table and the one-line error rule.

Only the standard library and the command modules (standard library only) are
imported at module scope, so `loradeck --help` answers at once; each command
imports the engine (and torch) when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tui.cli import chat, evaluation, export, inspect, models, runs, serve

DEFAULT_RUNS_DIR = "runs"
COMMAND_GROUPS = (models, runs, chat, evaluation, export, inspect, serve)  # in the order `loradeck --help` lists them


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="loradeck",
        description="A terminal cockpit for LoRA / QLoRA fine-tuning. Without a command, opens the TUI.")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="folder holding run directories (default: ./runs)")
    parser.add_argument("--config", "-c", default=None, help="config the TUI's new-run form starts from")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    parser.add_argument("--ssh-command", default="ssh", metavar="CMD",
                        help="how to reach a --runs-dir user@host:RUNS (default: ssh)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    for command in sub.choices.values():  # global options also work after the command
        command.add_argument("--runs-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if not any(action.dest == "config" for action in command._actions):  # `train CONFIG` names its own
            command.add_argument("--config", "-c", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _cmd_tui(args) -> int:
    from engine.run.remote import RemoteRunsFolder, parse_remote
    from tui.app import LoradeckApp

    remote = parse_remote(args.runs_dir)
    if remote is None:
        LoradeckApp(runs_dir=Path(args.runs_dir), config_path=args.config).run()
        return 0
    folder = RemoteRunsFolder(*remote, ssh_command=args.ssh_command)
    try:
        LoradeckApp(runs_dir=folder.start(), config_path=args.config).run()
    finally:
        folder.stop()
    return 0


COMMANDS = {None: _cmd_tui}
for _group in COMMAND_GROUPS:
    COMMANDS.update(_group.COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `loradeck` console script."""
    args = build_parser().parse_args(argv)
    from engine.library_output import default_log_file, route_library_output

    route_library_output(default_log_file(), debug=args.debug)
    try:
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # here, not at exit, so a reader that went away is handled below
        return code
    except BrokenPipeError:
        # The reader (`| head`) has gone: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("loradeck: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for a person; --debug for the traceback
        from engine.errors import LoradeckError

        if args.debug:
            raise
        if isinstance(exc, LoradeckError):
            print(f"loradeck: error: {exc}", file=sys.stderr)
            return exc.exit_code
        print(f"loradeck: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
