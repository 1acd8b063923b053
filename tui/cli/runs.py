"""Commands that start, steer and report on training runs: train, resume, attach, extend, preflight, status,
stop, save."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path


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
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="training processes, one per GPU (DDP through accelerate); 0: every visible GPU "
                             "(distributed.processes)")


def _session_overrides(args) -> list[str]:
    overrides = []
    for flag, key in (("session", "budget"), ("preset", "preset"), ("deadline", "deadline"),
                      ("session_start", "start")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"session.{key}={value}")
    if args.with_optimizer:
        overrides.append("session.with_optimizer=true")
    if getattr(args, "processes", None) is not None:
        overrides.append(f"distributed.processes={args.processes}")
    return overrides


def add_parsers(sub) -> None:
    """The run commands' parsers: train, resume, attach, extend, preflight, status, stop, save."""
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
    attach.add_argument("run_dir", help="a run directory, or user@host:/path/to/run on another machine (over ssh)")
    tail = sub.add_parser("tail", help="stream a run's events (what `attach user@host:RUN` runs over ssh)",
                          description="Print RUN's events.jsonl from a byte offset as it grows, with a heartbeat, "
                                      "and queue control commands read from stdin. Used by a remote attach.")
    tail.add_argument("run_dir")
    tail.add_argument("--from", dest="offset", type=int, default=0, help="byte offset to start from")
    tail.add_argument("--list", action="store_true", help="RUN is a runs folder: print its run names as JSON")

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
    preflight.add_argument("--speed", action="store_true",
                           help="also train a few real steps: tokens/s, MFU, peak memory, epochs that fit the session")
    preflight.add_argument("--steps", type=int, default=8, help="steps the speed probe times (default 8)")
    preflight.add_argument("--session", metavar="DURATION", default=None,
                           help="the session to fit (default: the config's session.budget or preset)")

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
    for remote_capable in (attach, extend, status, stop, save):
        remote_capable.add_argument("--ssh-command", default="ssh", metavar="CMD",
                                    help="how to reach user@host:RUN (default: ssh, with your keys and ~/.ssh/config)")


def _print_step(event: dict) -> None:
    from tui.format import format_number

    total = event.get("max_steps")
    parts = [f"step {event['step']}" + (f"/{total}" if total else ""), f"loss {format_number(event.get('loss'))}",
             f"lr {event['lr']:.2e}" if isinstance(event.get("lr"), float) else "lr —",
             f"{event['tokens_per_s']:.0f} tok/s" if event.get("tokens_per_s") else "",
             f"epoch {event.get('epoch', 0):.2f}"]
    if "reward_margin" in event:  # a DPO run: what it optimises
        parts[2:2] = [f"margin {format_number(event['reward_margin'], 3)}",
                      f"acc {format_number(100 * (event.get('preference_accuracy') or 0), 3)}%"]
    print("  ".join(p for p in parts if p), flush=True)


def _foreground_processes(paths, processes: int, resume_from: Path | None) -> int:
    """Several ranks in this terminal: rank 0's progress lines here, every rank's library output in trainer.log."""
    import subprocess

    from engine import SOURCE_ROOT
    from engine.train.distributed import launch_command
    from engine.train.launcher import processes_exit_line

    print(f"run directory: {paths.root} ({processes} processes)", flush=True)
    worker = ["engine.train.worker", str(paths.root)] + (["--resume", str(resume_from)] if resume_from else [])
    with open(paths.log_file, "ab") as log:
        code = subprocess.call(launch_command(processes, worker), stdin=subprocess.DEVNULL, stderr=log,
                               cwd=str(SOURCE_ROOT))
    if code:
        print(f"error: {processes_exit_line(paths.root, code)}", file=sys.stderr, flush=True)
    return code


def _start_training(args, config, paths, resume_from: Path | None = None) -> int:
    from engine.train.distributed import resolve_processes
    from engine.train.launcher import launch_detached, print_progress

    processes = resolve_processes(config.distributed.processes)
    if args.foreground and processes > 1:
        return _foreground_processes(paths, processes, resume_from)
    if args.foreground:
        from engine.library_output import leave_bitsandbytes_unimported, route_library_output
        from engine.train.run import run_training
        from engine.train.session import run_class_for

        route_library_output(paths.log_file, debug=args.debug)
        leave_bitsandbytes_unimported(config.model.load_in_4bit)
        print(f"run directory: {paths.root}", flush=True)
        return run_training(paths.root, config, resume_from=resume_from, on_step=_print_step,
                            run_class=run_class_for(config), progress=print_progress)
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

    from engine.run.events import EventTail
    from engine.run.status import trainer_pid
    from engine.train.handoff import resumed_line

    tail = EventTail(paths.events)
    deadline = time.monotonic() + timeout_s
    gone = False
    while time.monotonic() < deadline:
        for event in tail.read_new():
            if event["type"] == "resumed":
                print(resumed_line(event["step"], event.get("epoch"), event.get("with_optimizer")))
                if event.get("schedule"):
                    print(event["schedule"])
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


def _check_strategy(config) -> None:
    """A strategy this machine cannot run is refused in one line before a run directory or process exists."""
    if config.distributed.strategy != "ddp":
        from engine.models.loading import best_device
        from engine.train.distributed import check_strategy

        check_strategy(config.distributed.strategy, best_device())


def _cmd_train(args) -> int:
    from engine.config import load_config
    from engine.train.launcher import new_run_dir, prepare_run_dir

    from engine.train.session import check_session

    config = load_config(args.config, args.overrides + _session_overrides(args))
    _check_strategy(config)
    _say_session(check_session(config.session))
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(args.runs_dir, Path(args.config).stem)
    return _start_training(args, config, prepare_run_dir(run_dir, config))


def _source_name(bundle_path: Path, data_path: str) -> str:
    """What a resumed run is named after: the run the bundle came from (without its time stamp), else the
    bundle's own folder, else the data file."""
    from engine.models.adapters import run_dir_of
    from tui.format import RUN_STAMP

    source = run_dir_of(bundle_path)
    folder = Path(bundle_path).resolve()
    name = source.name if source is not None else folder.name if folder.name not in ("handoff", "adapter") else ""
    name = RUN_STAMP.sub("", name)
    return name or Path(data_path).stem or "run"


def _cmd_resume(args) -> int:
    from engine.config import save_config
    from engine.train.handoff import open_bundle
    from engine.errors import RunError
    from engine.train.launcher import discard_unstarted_run, new_run_dir, prepare_run_dir, stage_bundle

    from engine.train.session import check_session

    overrides = args.overrides + _session_overrides(args)
    bundle = open_bundle(args.bundle, overrides)
    _check_strategy(bundle.config)
    _say_session(check_session(bundle.config.session))
    for note in bundle.notes:
        print(f"note: {note}", file=sys.stderr)
    label = f"{_source_name(bundle.path, bundle.config.data.path)}-from-step-{bundle.state['global_step']}"
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(args.runs_dir, label)
    paths = prepare_run_dir(run_dir, bundle.config)
    # The run resumes from its own copy, so the source bundle is never touched and may be deleted later;
    # data that travelled in the bundle is read from that copy too.
    try:
        with _sigterm_interrupts():
            staged = open_bundle(stage_bundle(bundle.path, paths.root), overrides)
    except KeyboardInterrupt:
        discard_unstarted_run(paths)
        raise RunError(f"resume interrupted while copying the bundle: nothing was started and the half-made "
                       f"{paths.root} is removed — run the same command again") from None
    except BaseException:
        discard_unstarted_run(paths)
        raise
    save_config(staged.config, paths.config)
    return _start_training(args, staged.config, paths, resume_from=staged.path)


@contextlib.contextmanager
def _sigterm_interrupts():
    """Within the block SIGTERM (a closing SSH session, `kill`) interrupts like Ctrl-C, so cleanup runs."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_extend(args) -> int:
    remote = _over_ssh(args, args.duration)
    if remote is not None:
        return remote
    from engine.config import parse_duration
    from engine.run.control import send_command
    from engine.errors import RunError
    from engine.run.status import summarize_run
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

    from engine.config import load_config, parse_duration
    from engine.errors import ConfigError
    from engine.train.preflight import WONT_FIT, measure_speed, run_preflight

    config = load_config(args.config, args.overrides)
    from engine.library_output import leave_bitsandbytes_unimported

    leave_bitsandbytes_unimported(config.model.load_in_4bit)
    if not 1 <= args.steps <= 1000:
        raise ConfigError(f"--steps {args.steps}: give 1–1000 steps for the speed probe")
    budget = None
    if args.session is not None:
        try:
            budget = parse_duration(args.session)
        except ValueError as exc:
            raise ConfigError(f"--session: {exc}") from None
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr))
    report = run_preflight(config, measure=not args.no_probe, progress=say)
    speed = None
    if args.speed and report.verdict != WONT_FIT:
        say(f"timing {args.steps} real training steps…")
        speed = measure_speed(config, steps=args.steps, budget_seconds=budget, progress=say)
    if args.json:
        print(json.dumps({**report.to_dict(), **({"speed": speed.to_dict()} if speed else {})}, indent=2))
    else:
        print(f"verdict: {report.verdict.upper()}")
        for reason in report.reasons:
            print(f"  {reason}")
        for suggestion in report.suggestions:
            print(f"  try: {suggestion}")
        if speed:
            print("\n".join(speed_lines(speed)))
    return 1 if report.verdict == WONT_FIT else 0


def speed_lines(speed) -> list[str]:
    """The speed probe for a person: speed, utilisation, memory, and what fits in the session."""
    from tui.format import format_bytes, format_duration, format_number, format_share

    memory = f"peak {format_bytes(speed.peak_allocated_bytes)}" + (
        f" allocated, {format_bytes(speed.peak_reserved_bytes)} reserved" if speed.peak_reserved_bytes else " RSS")
    lines = [f"speed: {format_number(speed.tokens_per_s, 4)} tok/s   MFU {format_share(speed.mfu)}   padding "
             f"{format_share(speed.padding)}   ({speed.steps} steps timed on {speed.device})",
             f"  memory: {memory}"]
    if speed.epoch_seconds:
        lines.append(f"  one epoch: {speed.train_tokens:,} tokens ≈ {format_duration(speed.epoch_seconds)}")
    if speed.epochs_in_budget is not None:
        lines.append(f"  session: {speed.epochs_in_budget:.1f} epochs fit in {format_duration(speed.budget_seconds)}"
                     " (before loading and saves)")
    else:
        lines.append("  session: no budget given (--session 9h30m, or session.budget in the config)")
    return lines


def _cmd_status(args) -> int:
    import json
    import time

    remote = _over_ssh(args, *(["--json"] if args.json else []))
    if remote is not None:
        return remote

    from engine.run.status import LIVE_STATUSES, run_duration, session_time_left, summarize_run
    from tui.format import format_duration, format_number, format_share

    if (Path(args.run_dir) / "state.json").is_file() and not (Path(args.run_dir) / "events.jsonl").is_file():
        from engine.train.checkpoint import read_state
        from engine.train.handoff import describe_bundle

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
             f"lr {format_number(summary.learning_rate, 3)}",
             f"speed      {format_number(summary.tokens_per_s, 4)} tok/s   padding {format_share(summary.padding)}   "
             f"MFU {format_share(summary.mfu)}",
             f"saved      {summary.checkpoints} checkpoints; last {summary.last_checkpoint or '—'}"]
    live = summary.status in LIVE_STATUSES
    if summary.deadline_at:
        lines.append(f"session    {format_duration(session_time_left(summary))} left"
                     + ("" if live else " when it ended"))
    if summary.handoff:
        lines.append(f"handoff    {summary.handoff}")
    if summary.started_at:
        lines.append(f"{'running' if live else 'ran':<11}{format_duration(run_duration(summary))} "
                     f"(last event {format_duration(time.time() - (summary.updated_at or time.time()))} ago)")
    if summary.message:
        lines.append(f"message    {summary.message}")
    for warning in summary.warnings[-3:]:
        lines.append(f"warning    {warning}")
    print("\n".join(lines))
    return 0


def _cmd_stop(args) -> int:
    import time

    from engine.run.control import send_command
    from engine.run.status import summarize_run, trainer_pid

    remote = _over_ssh(args, *(["--wait"] if args.wait else []))
    if remote is not None:
        return remote
    send_command(args.run_dir, "stop")
    print(f"stop requested: {args.run_dir} saves its adapter at the next step boundary, then exits")
    if args.wait:
        while trainer_pid(args.run_dir) is not None:
            time.sleep(0.5)
        summary = summarize_run(args.run_dir)
        print(f"{summary.status}: {summary.message or ''}")
    return 0


def _cmd_save(args) -> int:
    from engine.run.control import send_command

    remote = _over_ssh(args)
    if remote is not None:
        return remote
    send_command(args.run_dir, "save")
    print(f"save requested: {args.run_dir} writes a checkpoint at the next step boundary")
    return 0


def _cmd_attach(args) -> int:
    from engine.run.paths import require_run_dir
    from engine.run.remote import RemoteFollower, parse_remote
    from tui.app import LoradeckApp

    remote = parse_remote(args.run_dir)
    if remote is None:
        paths = require_run_dir(args.run_dir)
        LoradeckApp(runs_dir=paths.root.resolve().parent, config_path=args.config, attach_to=paths.root).run()
        return 0
    follower = RemoteFollower(*remote, ssh_command=args.ssh_command)
    mirror = follower.start()
    try:
        LoradeckApp(runs_dir=mirror.parent, config_path=args.config, attach_to=mirror).run()
    finally:
        follower.stop()
    return 0


def _over_ssh(args, *extra: str) -> int | None:
    """Run this command on the machine of a `user@host:RUN` argument (its output here); None for a local run."""
    import shlex
    import subprocess

    from engine.run.remote import parse_remote

    remote = parse_remote(args.run_dir)
    if remote is None:
        return None
    host, path = remote
    return subprocess.call([*shlex.split(args.ssh_command), host, shlex.join(["loradeck", args.command, path,
                                                                               *extra])])


def _cmd_tail(args) -> int:
    from engine.run.remote import list_runs, serve_tail

    if args.list:
        import json

        print(json.dumps(list_runs(args.run_dir)))
        return 0

    if args.offset < 0:
        from engine.errors import RunError

        raise RunError(f"--from {args.offset}: a byte offset is 0 or more")
    return serve_tail(args.run_dir, args.offset, sys.stdout.buffer, sys.stdin)


COMMANDS = {
    "train": _cmd_train,
    "resume": _cmd_resume,
    "attach": _cmd_attach,
    "tail": _cmd_tail,
    "extend": _cmd_extend,
    "preflight": _cmd_preflight,
    "status": _cmd_status,
    "stop": _cmd_stop,
    "save": _cmd_save,
}
