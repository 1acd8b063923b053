"""One training run from start to finish: load, train, save, and say how it ended, all in the run directory.

`run_training` is what the detached worker and `--foreground` both call. The
engine adds callbacks, not a hand-written loop (`engine.train.callback`);
`TrainingRun` holds what the callback and the loop share (paths, events,
timings, saving, probes) and the hooks the session clock overrides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Callable

from engine.config import RunConfig, dumps_config
from engine.errors import DataError, LoradeckError, RunError
from engine.library_output import library_stderr, settle_library_loggers
from engine.run.control import prepare_control_dir
from engine.run.events import EventWriter
from engine.run.paths import RunPaths, complete_checkpoints, make_run_dir, private_files
from engine.run.space import RESERVE_BYTES, SpaceReserve, folder_bytes, free_bytes, is_disk_full
from engine.run.status import SummaryKeeper, hold_run_lock
from engine.train.batches import (TokenBudgetPlan, check_token_budget, make_collator, packing_choice,
                                  planned_steps)
from engine.train.callback import run_directory_callback_class
from engine.train.checkpoint import (read_state, remove_folder, remove_stale_staging,
                                     write_checkpoint)
from engine.train.sft import build_sft_config, loradeck_trainer_class, to_dataset

LOSS_TAIL = 50


DISK_ADVICE = "free space on this disk (df -h), or set train.keep_checkpoints=2 to prune old checkpoints"
PROBE_AT_SAVES = ("first", "periodic", "requested", "final")  # not when stopping for a signal or the deadline


class StopFlag:
    """Why the run should stop at the next step boundary (signal, stop command, deadline)."""

    def __init__(self):
        self.reason: str | None = None
        self.signal_name: str | None = None

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self.signal_name = signal.Signals(signum).name
            if self.reason is None:
                self.reason = "stopped"
        self.previous = {number: signal.signal(number, handler) for number in (signal.SIGTERM, signal.SIGINT)}

    def restore_signal_handlers(self) -> None:
        """Give SIGTERM/SIGINT back to whoever had them (a `--foreground` CLI, a test) once the run is over."""
        for number, previous in getattr(self, "previous", {}).items():
            signal.signal(number, previous)


class TrainingRun:
    """State shared between run_training and the callback: paths, events, timing, saving.

    Subclasses (the session clock) override the hooks `on_train_begin`,
    `should_stop_after_step`, `after_step` and `handle_command`.
    """

    def __init__(self, paths: RunPaths, config: RunConfig, events: EventWriter, stop: StopFlag):
        self.paths = paths
        self.config = config
        self.events = events
        self.stop = stop
        self.model = None
        self.trainer = None
        self.fingerprint: dict[str, Any] = {}
        self.loss_tail: deque = deque(maxlen=LOSS_TAIL)
        self.train_rows = 0
        self.data_files: list = []
        self.reference: Path | None = None  # RUN_DIR/reference: the adapter this run continued (bundles carry it)
        self.main = True  # rank 0 (or the only process): writes the run directory; other ranks only train
        self.rank_pids: list[int] = []  # every rank's pid, gathered when training begins
        self.held_weights: int | None = None  # bytes of weights this rank holds (several processes)
        from engine.train.distributed import shards_model

        self.sharded = shards_model(config.distributed.strategy)  # FSDP: every rank holds shards of the weights
        self.save_seconds: deque = deque(maxlen=20)
        self.step_seconds: deque = deque(maxlen=20)
        self.eval_seconds: deque = deque(maxlen=5)
        self.load_seconds = 0.0
        self.with_optimizer = config.session.with_optimizer
        self.last_saved_step = -1
        self.resumed_from: dict[str, Any] | None = None
        self.eval_overhead = 0.0
        self.eval_batches = 0
        self.tokenizer = None
        self.probed_step = -1
        self.reserve = SpaceReserve(paths.root)  # run_training holds it and gives it up when a write fails
        self.cuda_allocator: str | None = None
        self.last_save_bytes = 0
        self.pending_saves: list[str] = []
        self.model_shape: tuple[int, int, int] | None = None  # (parameters, layers, hidden) for MFU
        self.peak_flops: float | None = None
        self.save_failures = 0
        self.saves_skipped_in_a_row = 0

    def samples_consumed(self, global_step: int) -> int:
        """Training rows used so far, counting partial last batches of finished epochs exactly."""
        plan = getattr(self.trainer, "loradeck_token_plan", None) if self.trainer is not None else None
        if plan is not None:  # batches of varying rows: count them from the plan
            accum = self.config.train.grad_accum
            steps_per_epoch = max(1, math.ceil(len(plan.batches(0)) / accum))
            epochs, steps_in_epoch = divmod(global_step, steps_per_epoch)
            return epochs * len(plan.lengths) + sum(len(batch) for batch in
                                                    plan.batches(epochs)[:steps_in_epoch * accum])
        world = self.trainer.args.world_size if self.trainer is not None else 1
        batch = self.config.train.batch_size * world  # the global batch: every rank's rows
        per_step = batch * self.config.train.grad_accum
        rows = max(self.train_rows, 1)
        steps_per_epoch = max(1, math.ceil(math.ceil(rows / batch) / self.config.train.grad_accum))
        epochs, steps_in_epoch = divmod(global_step, steps_per_epoch)
        return epochs * rows + min(steps_in_epoch * per_step, rows)

    def state_dict(self, reason: str) -> dict[str, Any]:
        state = self.trainer.state
        return {
            "format": "loradeck-checkpoint/1",
            "global_step": state.global_step,
            "epoch": state.epoch,
            "max_steps": state.max_steps,
            "samples_consumed": self.samples_consumed(state.global_step),
            "samples_per_epoch": self.train_rows,
            "data_seed": self.config.train.seed,
            "group_by_length": self.config.train.group_by_length,
            "world_size": self.trainer.args.world_size,
            "global_batch": self.trainer.args.world_size * self.config.train.batch_size * self.config.train.grad_accum,
            "data_files": [f.to_dict() for f in self.data_files],
            "lr": self.trainer.lr_scheduler.get_last_lr()[0] if self.trainer.lr_scheduler else None,
            "lr_schedule_step": state.global_step,
            "loss_tail": list(self.loss_tail),
            "base_model": self.fingerprint,
            "lora": {"r": self.config.lora.r, "alpha": self.config.lora.alpha,
                     "target_modules": list(self.config.lora.target_modules)},
            "with_optimizer": self.with_optimizer,
            "resumed_from": self.resumed_from,
            "reason": reason,
            "saved_at": time.time(),
        }

    def extra_files(self) -> dict[str, Any]:
        import random

        import numpy
        import torch

        # The HF Trainer's own resume format, so `train(resume_from_checkpoint=...)` can continue from it.
        files: dict[str, Any] = {"trainer_state.json": json.dumps(dataclasses.asdict(self.trainer.state), indent=2,
                                                                  sort_keys=True, default=str) + "\n"}
        if self.trainer.lr_scheduler is not None:
            files["scheduler.pt"] = self.trainer.lr_scheduler.state_dict()
        if self.with_optimizer and self.trainer.optimizer is not None:
            files["optimizer.pt"] = self.trainer.optimizer.state_dict()
            rng = {"python": random.getstate(), "cpu": torch.random.get_rng_state(), "numpy": numpy.random.get_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.random.get_rng_state()
            files["rng_state.pth"] = rng
        return files

    def utilisation(self, tokens_per_s: float | None, tokens_per_row: float | None) -> float | None:
        """Model FLOPs utilisation of the last steps, or None off a GPU of known peak."""
        from engine.run.telemetry import lora_flops_per_token, model_flops_utilisation

        if self.model_shape is None or tokens_per_row is None:
            return None
        return model_flops_utilisation(tokens_per_s, lora_flops_per_token(*self.model_shape, tokens_per_row),
                                       self.peak_flops)

    def request_save(self, reason: str) -> None:
        """Ask for a save at the end of this step, once its loss is logged (`save_pending` performs it)."""
        if reason not in self.pending_saves:
            self.pending_saves.append(reason)

    def save_pending(self) -> Path | None:
        """One save for every reason requested this step (named by the first), or None when none was asked."""
        reasons, self.pending_saves = self.pending_saves, []
        return self.save(reasons[0]) if reasons else None

    def save(self, reason: str, *, final: bool = False) -> Path | None:
        """Write `checkpoints/step-N`, refresh `handoff/` (and `adapter/` when `final`), atomically, with events.

        A periodic save the disk has no room for is skipped (or, failing half-way, discarded) with a `warning`
        naming what is kept; the final save raises RunError instead. Returns the checkpoint, or None if skipped
        (always on ranks other than 0: rank 0 writes the run's files).
        """
        adapter_state = self.gather_adapter()
        step = self.trainer.state.global_step
        if not self.main:
            self.pending_saves.clear()
            self.probe_with_rank_0(step, reason, adapter_state)
            return None
        if not final and self.last_save_bytes:
            free = free_bytes(self.paths.root)
            if free < self.last_save_bytes * 1.2 + RESERVE_BYTES:
                self.save_skipped(step, f"skipped the {reason} checkpoint at step {step}: {free / 1e6:.0f} MB free, "
                                        f"a checkpoint takes about {self.last_save_bytes / 1e6:.0f} MB — "
                                        f"{self.kept_saves()} kept; {DISK_ADVICE}")
                self.probe_with_rank_0(step, reason, adapter_state)
                return None
        try:
            saved = self._write_save(step, reason, final, skipped=self.saves_skipped_in_a_row,
                                     adapter_state=adapter_state)
        except Exception as exc:
            if not is_disk_full(exc, self.paths.root):
                raise
            self.reserve.release()  # room for the events that explain it
            message = f"disk full while saving step {step}: {self.kept_saves()} intact; {DISK_ADVICE}"
            if final:
                raise RunError(message) from None
            self.save_skipped(step, message)
            self.probe_with_rank_0(step, reason, adapter_state)
            return None
        if self.saves_skipped_in_a_row:
            self.saves_skipped_in_a_row = 0
            self.reserve.hold()  # the disk has room again: so does the reserve
        return saved

    def save_skipped(self, step: int, message: str) -> None:
        """Count a save the disk had no room for; warn at the first of a streak only (the checkpoint event that
        ends the streak says how many were skipped)."""
        self.save_failures += 1
        self.saves_skipped_in_a_row += 1
        if self.saves_skipped_in_a_row == 1:
            self.events.emit("warning", step=step, kind="disk", message=message)

    def kept_saves(self) -> str:
        """What the user still has after a failed save: 'checkpoint step 40 and the handoff from step 40'."""
        checkpoints = complete_checkpoints(self.paths.checkpoints)
        parts = [f"checkpoint {checkpoints[-1].name}"] if checkpoints else []
        try:
            parts.append(f"the handoff from step {read_state(self.paths.handoff).get('global_step')}")
        except RunError:
            pass
        if not parts:
            return "nothing was saved before it, so nothing is"
        return " and ".join(parts) + (" are" if len(parts) > 1 else " is")

    def probe_with_rank_0(self, step: int, reason: str, adapter_state) -> None:
        """With FSDP the probes at a save need every rank: where rank 0 probes inside its save, the others (and
        rank 0 itself when it skipped the save) probe here, so all generate together."""
        if adapter_state is not None and reason in PROBE_AT_SAVES:
            self.run_probes(step)

    def gather_adapter(self) -> dict[str, Any] | None:
        """With FSDP every rank holds a shard of the adapter: all ranks gather it whole here (rank 0 writes it).
        None otherwise (the model's own weights are whole)."""
        if not self.sharded or self.model is None:
            return None
        from engine.train.distributed import full_trainable_state

        return full_trainable_state(self.model)

    def _write_save(self, step: int, reason: str, final: bool, skipped: int = 0,
                    adapter_state: dict[str, Any] | None = None) -> Path:
        from engine.train.checkpoint import write_linked_folder
        from engine.train.handoff import write_handoff

        started = time.monotonic()
        target = self.paths.checkpoints / f"step-{step:06d}"
        state = self.state_dict(reason)
        write_checkpoint(target, model=self.model, state=state, config_toml=dumps_config(self.config),
                         extra_files=self.extra_files(), adapter_state=adapter_state)
        handoff = write_handoff(self.paths.handoff, target, state, self.config, self.data_files, self.reference)
        if final:
            write_linked_folder(self.paths.adapter, target)
        self.last_save_bytes = folder_bytes(target)
        self.prune_checkpoints(keep=target)
        if reason in PROBE_AT_SAVES:
            # Inside the timed save on purpose: the session clock then budgets for probes at periodic saves.
            self.run_probes(step)
        elapsed = time.monotonic() - started
        self.save_seconds.append(elapsed)
        self.last_saved_step = step
        self.events.emit("checkpoint", step=step, path=str(target), handoff=str(handoff), reason=reason,
                         seconds=round(elapsed, 3), final=final, **({"skipped_saves": skipped} if skipped else {}))
        self.events.sync()
        return target

    def prune_checkpoints(self, keep: Path) -> None:
        """Delete all but the newest `train.keep_checkpoints` checkpoints (never `keep`, never the handoff)."""
        limit = self.config.train.keep_checkpoints
        if not limit:
            return
        for old in complete_checkpoints(self.paths.checkpoints)[:-limit]:
            if old != keep:
                remove_folder(old)

    def run_probes(self, step: int) -> None:
        """Answer `[probe] prompts` with the adapter as it is now and write one `sample` event (greedy, batched).

        A failure here is a warning, never the end of the run.
        """
        prompts = self.config.probe.prompts
        if not prompts or self.model is None or self.tokenizer is None or step == self.probed_step:
            return
        if not self.main and not self.sharded:
            return  # FSDP: every rank takes part in each forward (greedy, so in step); rank 0 writes the answers
        from engine.chat.generation import GenerationSettings, answer_batch

        self.probed_step = step
        started = time.monotonic()
        was_training = self.model.training
        self.model.eval()
        try:
            result = answer_batch(self.model, self.tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                                  GenerationSettings(max_new_tokens=self.config.probe.max_new_tokens))
        except Exception as exc:  # a probe must never cost the run
            self.events.emit("warning", step=step, message=f"probe generation failed: {str(exc)[:300]}")
            return
        finally:
            self.model.train(was_training)
        self.events.emit("sample", step=step, seconds=round(time.monotonic() - started, 3),
                         samples=[{"prompt": prompt, "answer": answer.text}
                                  for prompt, answer in zip(prompts, result.answers)])

    def has_time_for(self, eval_batches: int) -> bool:
        """Hook: whether a final eval of `eval_batches` batches fits before the deadline (always, without one)."""
        return True

    def refuse_start(self) -> str | None:
        """Hook: why training must not start at all (no session time left), or None."""
        return None

    def eval_deadline(self) -> float | None:
        """Hook: when (epoch seconds) an after-training report must be done by; None without a session clock."""
        return None

    def write_eval_report(self, step: int, say: Callable[[str], None]) -> None:
        """`eval.after_training`: the before/after report of the final adapter, as `loradeck eval RUN` writes it,
        then an `eval_report` event. It never costs the run anything: when it cannot be written (no held-out data,
        the session clock would run out, a stop signal, a failure) a `warning` says so and how to write it later."""
        from engine.eval.report import EvalOutOfTime, evaluate, plan_eval, write_report

        later = f"`loradeck eval {self.paths.root}` writes it later (on any machine)"
        deadline = self.eval_deadline()
        stages: set[str] = set()

        def progress(fraction: float, message: str) -> None:
            stage = message.split(":")[0].split(" ")[0]
            if stage not in stages:
                stages.add(stage)
                say(f"eval report {fraction:.0%}: {message}")

        try:
            plan = plan_eval(self.paths.root)
            needed = self.load_seconds * 2 + max(self.eval_seconds, default=0.0) * 2
            if deadline is not None and time.time() + needed > deadline:
                raise EvalOutOfTime(f"loading the models and the held-out loss need about {needed:.0f} s, "
                                    f"{max(0.0, deadline - time.time()):.0f} s is left")
            say(f"eval report: base and adapter on {len(plan.items)} held-out prompts")
            report, answers = evaluate(plan, progress=progress, should_stop=lambda: self.stop.reason is not None,
                                       deadline=deadline)
            folder = write_report(self.paths.root, report, answers)
        except EvalOutOfTime as exc:
            self.events.emit("warning", step=step, kind="eval",
                             message=f"eval report skipped before the session deadline: {exc} — {later}")
        except InterruptedError:
            self.events.emit("warning", step=step, kind="eval",
                             message=f"eval report stopped ({self.stop.signal_name or 'stop'}) — {later}")
        except LoradeckError as exc:
            self.events.emit("warning", step=step, kind="eval", message=f"eval report skipped: {exc}")
        except Exception as exc:  # the adapter is saved and the run finished: a report failure must not undo that
            traceback.print_exc()
            self.events.emit("warning", step=step, kind="eval",
                             message=f"eval report failed: {type(exc).__name__}: {exc} — {later}")
        else:
            self.events.emit("eval_report", step=step, folder=str(folder), headline=report["headline"],
                             prompts=report["prompts"], seconds=report["seconds"]["total"],
                             models={label: {"heldout_loss": model["heldout_loss"], "metrics": model["metrics"]}
                                     for label, model in report["models"].items()})
            say(f"eval report: {report['headline']} — {folder / 'report.md'}")

    def on_train_begin(self, state, control) -> None:
        """Hook run when the training loop starts (after a resume has restored the state)."""

    def should_stop_after_step(self, state, control, *, save_due: bool) -> str | None:
        """Hook: a reason to stop now (the session clock's "deadline"), or None to keep training."""
        return None

    def after_step(self, state, control) -> None:
        """Hook run at every step end, after commands and periodic saves."""

    def handle_command(self, command: dict[str, Any], state) -> None:
        """Commands beyond stop/save (the session clock handles `extend`)."""
        self.events.emit("warning", step=state.global_step,
                         message=f"'{command['command']}' ignored: this run has no session clock")

    def emit_telemetry(self, step: int, ranks: list[dict[str, Any]] | None = None) -> None:
        """One `telemetry` event: GPU devices (N/A without NVML), this process's allocator, host RAM/CPU, and
        every rank's own figures when several processes train."""
        from engine.run.telemetry import collect_telemetry

        if not self.main:
            return
        self.events.emit("telemetry", step=step, **collect_telemetry(ranks))


def schedule_change(bundle: str | Path, bundle_state: dict, max_steps: int, train) -> tuple[str, int | None]:
    """What resuming does to the learning-rate schedule when the total number of steps changed ('' when it did
    not), and the warmup steps of a new schedule (None: the old one continues). A bundle stopped before its
    schedule's end continues it: the rate it reached, then the configured shape over the steps now left, with no
    jump. A bundle whose schedule had run to its end (its rate decayed to 0 under linear or cosine) would train on
    at 0, so a new one starts: the configured warmup (at most the steps left) to `train.learning_rate`, then the
    shape."""
    try:
        planned = json.loads((Path(bundle) / "trainer_state.json").read_text(encoding="utf-8")).get("max_steps")
    except (OSError, ValueError):
        return "", None
    step = bundle_state["global_step"]
    if not isinstance(planned, int) or planned == max_steps or step >= max_steps:
        return "", None
    left = max_steps - step
    if step >= planned:
        warmup = min(train.warmup_steps, left)
        return (f"train.max_steps changed {planned} → {max_steps}: the old schedule had ended at step {step}, so a "
                f"new one starts — {warmup} warmup step{'s' if warmup != 1 else ''} to train.learning_rate="
                f"{train.learning_rate:g}, then the {train.lr_scheduler} shape over the {left} steps left"), warmup
    return (f"train.max_steps changed {planned} → {max_steps}: the learning rate continues from the rate the old "
            f"schedule had reached at step {step + 1} and follows the {train.lr_scheduler} shape over the "
            f"{left} steps left (no jump)"), None


def run_training(run_dir: str | Path, config: RunConfig, *, resume_from: str | Path | None = None,
                 on_step: Callable[[dict], None] | None = None, run_class: type[TrainingRun] = TrainingRun,
                 progress: Callable[[str], None] | None = None) -> int:
    """Train in this process, owning `run_dir`; returns the process exit code.

    Writes every event, checkpoint and the final adapter into the run directory.
    SIGTERM/SIGINT and `stop` commands save the adapter before returning.
    """
    from engine.train.distributed import leave_process_group, process_rank

    paths = RunPaths(Path(run_dir))
    allocator = settle_cuda_allocator()
    rank, world_size = process_rank()
    if rank > 0:
        code = _follow_run_dir(paths, config, resume_from, run_class, rank, allocator)
    else:
        with private_files():
            code = _own_run_dir(paths, config, resume_from, on_step, run_class, progress, allocator, world_size)
    if code == 0:  # a failed rank leaves its group to the launcher: shutting it down could wait on a lost peer
        leave_process_group()
    return code


def _follow_run_dir(paths: RunPaths, config: RunConfig, resume_from, run_class, rank: int, allocator: str) -> int:
    """A rank other than 0: trains its share, writes nothing into the run directory (rank 0 speaks for the run);
    a failure is one line on its stderr (the run's trainer.log)."""
    from engine.train.distributed import SilentEvents

    stop = StopFlag()
    stop.install_signal_handlers()
    run = run_class(paths, config, SilentEvents(), stop)
    run.main = False
    run.cuda_allocator = allocator
    try:
        return _train(run, resume_from, None, lambda message: None)
    except LoradeckError as exc:
        print(f"rank {rank}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except BaseException as exc:  # noqa: BLE001 — the launcher ends the other ranks; trainer.log says why
        print(f"rank {rank}: {type(exc).__name__}: {str(exc).strip()[:300]}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop.restore_signal_handlers()


ALLOCATOR_SETTING = "expandable_segments:True"


def settle_cuda_allocator() -> str:
    """Let the CUDA caching allocator grow segments instead of carving fixed blocks (batch shapes change every
    step; fixed blocks fragment: 19.3 GB reserved for 13.4 GB allocated was measured without it), unless the
    user chose a setting. Read when CUDA first allocates, so it must run before the model loads. Returns the
    setting in force."""
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]} (yours)"
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTING
    return f"PYTORCH_CUDA_ALLOC_CONF={ALLOCATOR_SETTING}"


def _own_run_dir(paths: RunPaths, config: RunConfig, resume_from, on_step, run_class, progress,
                 allocator: str, world_size: int = 1) -> int:
    try:
        make_run_dir(paths.root)
        lock = hold_run_lock(paths)
    except RunError as exc:  # another trainer owns this directory, or it cannot be one: write nothing into it
        (progress or print)(f"error: {exc}")
        return exc.exit_code
    prepare_control_dir(paths)
    paths.pid_file.write_text(str(os.getpid()))
    for folder in (paths.root, paths.checkpoints):
        remove_stale_staging(folder)
    keeper = SummaryKeeper(paths)
    events = EventWriter(paths.events, observer=keeper,
                         common={"world_size": world_size} if world_size > 1 else None)
    stop = StopFlag()
    stop.install_signal_handlers()
    say = progress or (lambda message: None)
    run = run_class(paths, config, events, stop)
    run.cuda_allocator = allocator
    run.reserve.hold()
    events.on_full = run.reserve.release
    try:
        if not paths.config.exists():
            paths.config.write_text(dumps_config(config), encoding="utf-8")
        events.emit("started", pid=os.getpid(), model=config.model.name, dataset=config.data.path,
                    resume_from=str(resume_from) if resume_from else None, host=os.uname().nodename,
                    python=sys.version.split()[0])
        return _train(run, resume_from, on_step, say)
    except LoradeckError as exc:
        try:
            events.emit("error", message=str(exc), kind=type(exc).__name__)
        except OSError:
            pass
        say(f"error: {exc}")
        return exc.exit_code
    except BaseException as exc:  # the run dir must say why the trainer died
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
        gone = gone_ranks(run.rank_pids)
        if gone:
            message = (f"rank {', '.join(map(str, gone))} of {len(run.rank_pids)} ended (its own error, if any, is "
                       f"in {paths.log_file}); the other ranks stopped with it: {message}")[:800]
        if "out of memory" in message.lower():
            message += " — lower train.batch_size or data.max_length, or set model.load_in_4bit=true"
        try:
            events.emit("error", message=message, step=run.trainer.state.global_step if run.trainer else None,
                        traceback=traceback.format_exc()[-4000:])
        except OSError:
            pass  # a disk with no room even after the reserve: trainer.log and the exit code still say it
        say(f"error: {message}")
        return 1
    finally:
        events.close()
        keeper.flush()
        run.reserve.release()
        with contextlib.suppress(OSError):  # the Trainer's output folder: ours saves elsewhere, so usually empty
            (paths.root / "trainer").rmdir()
        try:
            if paths.pid_file.read_text().strip() == str(os.getpid()):
                paths.pid_file.unlink()
        except OSError:
            pass
        os.close(lock)  # releases the lock: the run is over
        stop.restore_signal_handlers()


def gone_ranks(pids: list[int], grace_s: float = 2.0) -> list[int]:
    """The ranks (other than this one, rank 0) whose process has ended (gone, or a zombie its launcher has not
    reaped yet). A peer's sockets close before its exit completes, so a failed collective may be seen first:
    look again for up to `grace_s`."""
    import psutil

    deadline = time.monotonic() + (grace_s if len(pids) > 1 else 0)
    while True:
        gone = []
        for rank, pid in enumerate(pids[1:], start=1):
            try:
                if psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                    gone.append(rank)
            except psutil.NoSuchProcess:
                gone.append(rank)
            except psutil.Error:
                pass
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.1)


def device_peak(device: str) -> tuple[str | None, float | None]:
    """(device name, dense peak FLOP/s or None) of the device training runs on."""
    from engine.run.telemetry import dense_peak_flops

    if device != "cuda":
        return None, None
    import torch

    name = torch.cuda.get_device_name(0)
    return name, dense_peak_flops(name)


def adopt_adapter_shape(config: RunConfig, model) -> None:
    """A continued adapter keeps its own rank, alpha and target modules: `[lora]` is set from it, so the state,
    bundles and resume checks describe the adapter that actually trains."""
    lora = model.peft_config["default"]
    config.lora.r, config.lora.alpha = int(lora.r), int(lora.lora_alpha)
    targets = lora.target_modules
    config.lora.target_modules = [targets] if isinstance(targets, str) else sorted(targets)


def _train(run: TrainingRun, resume_from, on_step, say) -> int:
    import torch

    from engine.models.backends import build_peft_model, choose_backend
    from engine.data.tokenize import prepare_data, read_data
    from engine.models.loading import best_device, dtype_choice

    from engine.models.fingerprint import base_fingerprint, check_fingerprint
    from engine.models.adapters import resolve_adapter
    from engine.train.distributed import check_strategy, process_rank
    from engine.train.handoff import keep_reference_adapter, resumed_line, snapshot_data_files
    from engine.data.preferences import preference_samples
    from engine.train.memory import plan_step

    config, events = run.config, run.events
    bundle_state = None
    if resume_from:
        from engine.train.checkpoint import verify_checkpoint

        bundle_state = verify_checkpoint(resume_from)
    device = best_device()
    check_strategy(config.distributed.strategy, device)
    backend = choose_backend(config.backend.name, device)
    torch.manual_seed(config.train.seed)
    if run.main:
        run.data_files = snapshot_data_files(config, run.paths.root)  # before reading: bundles carry what was read
    dpo = config.train.method == "dpo"
    if dpo:  # read (and refuse) the data before spending minutes loading a model
        from engine.data.preferences import configured_preference_data

        pairs = configured_preference_data(config)
    else:
        read = read_data(config.data, config.train.seed)
    say(f"loading {config.model.name} on {device} ({backend.name})")
    loaded_at = time.monotonic()
    model, tokenizer = build_peft_model(config, device, backend, say, sharded=run.sharded)
    run.load_seconds = time.monotonic() - loaded_at
    run.model = model
    run.tokenizer = tokenizer
    run.fingerprint = base_fingerprint(model, config.model.name)
    if bundle_state is not None:
        check_fingerprint(bundle_state, run.fingerprint)
    if config.model.adapter:
        adopt_adapter_shape(config, model)
        if run.main:
            run.reference = keep_reference_adapter(resolve_adapter(config.model.adapter), run.paths.root)
    torch_dtype, dtype_reason = dtype_choice(config.model.dtype, device)
    trainable, total = model.get_nb_trainable_parameters()
    device_name, run.peak_flops = device_peak(device)
    shape = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    shape = getattr(shape, "get_text_config", lambda: shape)()
    run.model_shape = (total, getattr(shape, "num_hidden_layers", 0), getattr(shape, "hidden_size", 0))
    token_plan, lengths = None, []
    if dpo:
        train_rows, eval_rows, notes = len(pairs.train), len(pairs.eval), pairs.notes
        data_format = "preference"
        format_reason = "prompt / chosen / rejected pairs (train.method = dpo)"
        packed, packing_reason = False, "DPO pairs are padded batches (TRL's preference collator)"
    else:
        data = prepare_data(config.data, tokenizer, config.train.seed, read)
        train_rows, eval_rows, notes = len(data.train), len(data.eval), data.notes
        data_format, format_reason = data.format, data.format_reason
        packed, packing_reason = packing_choice(config.train.packing, device, model, len(tokenizer))
        lengths = [len(sample.input_ids) for sample in data.train]
    run.train_rows = train_rows
    run.eval_batches = math.ceil(eval_rows / config.train.batch_size)
    for note in notes:
        events.emit("warning", message=note)
    if config.train.tokens_per_batch and not dpo:
        check_token_budget(config.train.tokens_per_batch, lengths, config.data.max_length)
        if packed:
            token_plan = TokenBudgetPlan(lengths, config.train.tokens_per_batch, config.train.seed)
            packing_reason += f"; micro-batches of up to {config.train.tokens_per_batch:,} tokens"
        else:
            events.emit("warning", kind="packing", message="train.tokens_per_batch needs packed batches: "
                                                           "batch_size rows per micro-batch instead")
    samples = preference_samples(config, tokenizer, pairs.train) if dpo else data.train
    plan = plan_step(config, model, samples, tokenizer.pad_token_id, device=device, dtype=torch_dtype,
                     backend=backend.name, packed=packed, processes=process_rank()[1])
    checkpointing = plan.checkpointing
    if process_rank()[1] > 1:  # every rank checkpoints or none does: rank 0's memory decides
        from accelerate import PartialState

        from engine.train.distributed import agree

        PartialState()  # the process group the trainer would start anyway, started now
        checkpointing, _ = agree(None, checkpointing)
    if checkpointing and config.model.load_in_4bit and backend.name == "transformers":
        model.enable_input_require_grads()  # checkpointed blocks need inputs that require grad
    trained_as = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                       gradient_checkpointing=checkpointing))
    max_steps = planned_steps(config, train_rows, world_size=process_rank()[1],
                              batches_per_epoch=len(token_plan.batches(0)) if token_plan else None)
    if not packed and packing_reason.startswith("not packing"):  # asked for, or auto on a GPU: the fallback is said
        events.emit("warning", kind="packing", message=packing_reason)
    events.emit("model_loaded", backend=backend.name, backend_reason=backend.reason, device=device,
                dtype=str(torch_dtype).replace("torch.", ""), dtype_reason=dtype_reason,
                load_in_4bit=config.model.load_in_4bit, packing=packed, packing_reason=packing_reason,
                device_name=device_name, peak_flops=run.peak_flops, cuda_allocator=run.cuda_allocator,
                trainable_params=trainable, total_params=total, seconds=round(time.monotonic() - loaded_at, 2),
                data_format=data_format, format_reason=format_reason, train_rows=train_rows,
                eval_rows=eval_rows, max_steps=max_steps, method=config.train.method,
                adapter_from=config.model.adapter or None, train_tokens=sum(lengths) if lengths else None,
                strategy=config.distributed.strategy if process_rank()[1] > 1 else None,
                gradient_checkpointing=checkpointing, checkpointing_reason=plan.checkpointing_reason,
                step_memory_estimate=plan.need, memory_available=plan.available)
    say(f"{data_format} data: {train_rows} train / {eval_rows} eval {'pairs' if dpo else 'rows'}; "
        f"{trainable:,} trainable of {total:,} parameters; {max_steps} steps"
        + (f"; DPO (beta {config.train.dpo_beta}, {config.train.dpo_loss} loss)" if dpo else ""))
    say(f"dtype {str(torch_dtype).replace('torch.', '')}: {dtype_reason}")
    say(f"batches {'packed' if packed else 'padded'}: {packing_reason}")
    say(f"gradient checkpointing {'on' if checkpointing else 'off'}: {plan.checkpointing_reason}")
    if run.stop.reason:
        events.emit("finished", reason="stopped", step=0, message=f"{run.stop.signal_name or 'stop'} before training")
        return 0

    callback = run_directory_callback_class()(run, on_step=on_step)
    if dpo:
        from engine.train.dpo import build_dpo_config, loradeck_dpo_trainer_class, to_preference_dataset

        with library_stderr():  # TRL tokenizes the pairs with datasets' map: its messages go to the run's log
            trainer = loradeck_dpo_trainer_class()(
                model=model, args=build_dpo_config(trained_as, run.paths.root / "trainer", bool(pairs.eval), device,
                                                   torch_dtype),
                train_dataset=to_preference_dataset(pairs.train),
                eval_dataset=to_preference_dataset(pairs.eval) if pairs.eval else None,
                processing_class=tokenizer, callbacks=[callback])
        kept = len(trainer.train_dataset)
        if kept < train_rows:
            events.emit("warning", message=f"{train_rows - kept} pair(s) dropped: their prompt alone fills "
                                           f"data.max_length={config.data.max_length} (raise it)")
        if kept == 0:
            raise DataError(f"{config.data.path}: every pair's prompt fills data.max_length="
                            f"{config.data.max_length} — raise data.max_length")
    else:
        trainer = loradeck_trainer_class()(
            model=model, args=build_sft_config(trained_as, run.paths.root / "trainer", bool(data.eval), device,
                                               torch_dtype, packed),
            train_dataset=to_dataset(data.train), eval_dataset=to_dataset(data.eval) if data.eval else None,
            processing_class=tokenizer, data_collator=make_collator(tokenizer.pad_token_id, packed=packed),
            callbacks=[callback])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # our events and progress line replace them
        trainer.remove_callback(noisy)
    settle_library_loggers()  # trl and datasets are imported by now
    run.trainer = trainer
    trainer.loradeck_run = run
    trainer.loradeck_chunked_loss = plan.chunked_loss
    if token_plan is not None:
        trainer.loradeck_token_plan = token_plan
    elif config.train.group_by_length and lengths:
        trainer.loradeck_lengths = lengths
    if bundle_state is not None:
        run.resumed_from = {"path": str(Path(resume_from).resolve()), "step": bundle_state["global_step"],
                            "host": os.uname().nodename}
        run.loss_tail.extend(bundle_state.get("loss_tail") or [])
        schedule, new_schedule_warmup = schedule_change(resume_from, bundle_state, max_steps, config.train)
        say(resumed_line(bundle_state["global_step"], bundle_state.get("epoch"), bundle_state.get("with_optimizer")))
        if schedule:
            trainer.loradeck_schedule_from = bundle_state["global_step"]
            trainer.loradeck_schedule_warmup = new_schedule_warmup
            say(schedule)
        events.emit("resumed", step=bundle_state["global_step"], epoch=bundle_state.get("epoch"),
                    bundle=str(resume_from), with_optimizer=bool(bundle_state.get("with_optimizer")),
                    loss_tail=bundle_state.get("loss_tail") or [], lr=bundle_state.get("lr"),
                    samples_consumed=bundle_state.get("samples_consumed"), schedule=schedule)
        if bundle_state["global_step"] >= max_steps:
            events.emit("finished", reason="completed", step=bundle_state["global_step"],
                        message=f"nothing to do: the bundle is at step {bundle_state['global_step']} of {max_steps}")
            return 0
    refusal = run.refuse_start()
    if refusal:
        events.emit("finished", reason="deadline", step=bundle_state["global_step"] if bundle_state else 0,
                    message=refusal)
        say(refusal)
        return 0
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    step = trainer.state.global_step
    reason = run.stop.reason or "completed"
    from engine.train.distributed import agree

    final_eval, _ = agree(None, bool(eval_rows and config.train.eval_every == 0 and reason == "completed"
                                     and run.has_time_for(run.eval_batches)))
    if final_eval:  # every rank evaluates its share, or none does
        trainer.evaluate()  # the callback's on_evaluate writes the eval event
    run.save(reason if reason != "completed" else "final", final=True)
    message = {"completed": f"trained {step} steps",
               "stopped": f"stopped at step {step} ({run.stop.signal_name or 'stop command'}); adapter saved",
               "deadline": f"stopped at step {step} before the session deadline; adapter saved"}.get(reason, reason)
    events.emit("finished", reason=reason, step=step, loss=run.loss_tail[-1][1] if run.loss_tail else None,
                adapter=str(run.paths.adapter), message=message)
    say(message)
    if config.eval.after_training and reason == "completed" and run.main:
        # The report loads the base and the saved adapter as `loradeck eval` does: the trained copy (held by the
        # trainer, its optimizer and the run) goes first, or a GPU would hold two.
        del trainer, model
        run.trainer = run.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        run.write_eval_report(step, say)
    return 0
