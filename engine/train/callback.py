"""The trainer's only link to the world: a `TrainerCallback` that writes events, obeys commands and saves.

TRL's `SFTTrainer` runs the loop; `RunDirectoryCallback` turns its logs into
`step`/`eval`/`telemetry` events, takes control commands at every step end,
asks the run whether to stop (signal, stop command, the session clock) and
saves checkpoints on schedule.
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Callable

from engine.run.control import take_commands
from engine.run.telemetry import rank_memory
from engine.train.batches import padding_share
from engine.train.distributed import agree, held_weight_bytes
from engine.train.dpo import dpo_step_fields

if TYPE_CHECKING:
    from engine.train.run import TrainingRun


def run_directory_callback_class():
    """The callback class (built on first use: transformers is imported only inside a training process)."""
    from transformers import TrainerCallback

    class RunDirectoryCallback(TrainerCallback):
        """Events out, commands in, checkpoints on schedule: the trainer's only link to the world."""

        def __init__(self, run: TrainingRun, telemetry_every_s: float = 5.0,
                     on_step: Callable[[dict], None] | None = None):
            self.run = run
            self.telemetry_every_s = telemetry_every_s
            self.last_telemetry = 0.0
            self.last_log_time = None
            self.last_log_tokens = 0
            self.last_log_step = 0
            self.last_batch_tokens = 0
            self.last_step_end = time.monotonic()
            self.on_step = on_step
            self.gather_memory = False  # several ranks: each sends its memory figures with the next step's decision

        def on_train_begin(self, args, state, control, **kwargs):
            if args.world_size > 1 and self.run.model is not None:
                # Prepared by now, and before any forward: FSDP holds only shards until one gathers a layer.
                self.run.held_weights = held_weight_bytes(self.run.model)
            self.run.run_probes(state.global_step)  # the starting behaviour, before any step is timed
            self.last_log_time = time.monotonic()
            self.last_log_tokens = state.num_input_tokens_seen or 0
            self.last_log_step = state.global_step
            self.last_batch_tokens = self.run.trainer.loradeck_batch_tokens if self.run.trainer else 0
            self.last_step_end = time.monotonic()
            # A resumed TrainerState carries the old run's logging/eval/save intervals; this run's config wins.
            state.compute_steps(args, state.max_steps)
            _, self.run.rank_pids = agree(os.getpid(), None)  # rank 0 can later say which rank is gone
            self.run.on_train_begin(state, control)

        def on_step_begin(self, args, state, control, **kwargs):
            self.save_pending()  # a save waiting for a log line that never came still happens

        def on_step_end(self, args, state, control, **kwargs):
            run = self.run
            # Wall time of the step just taken: data, forward, backward, optimizer, logging — not our
            # saves (they happen after `last_step_end` is stamped) and not eval (timed on its own).
            run.step_seconds.append(max(0.0, time.monotonic() - self.last_step_end - run.eval_overhead))
            run.eval_overhead = 0.0
            local_stop = run.stop.reason  # a signal this process received
            memory = rank_memory(args.process_index, run.held_weights) if self.gather_memory else None
            decision = None
            if run.main:  # rank 0 reads the commands and asks the clock; every rank follows its decision
                commands, refused = take_commands(run.paths)
                for reason in refused:
                    run.events.emit("warning", step=state.global_step, kind="control",
                                    message=f"command ignored: {reason}")
                for command in commands:
                    run.events.emit("control", step=state.global_step, command=command["command"])
                    if command["command"] == "stop":
                        run.stop.reason = run.stop.reason or "stopped"
                    elif command["command"] == "save":
                        run.request_save("requested")
                    else:
                        run.handle_command(command, state)
                every = run.config.train.save_every
                save_due = bool(every and state.global_step % every == 0 and state.global_step < state.max_steps)
                if not run.stop.reason:
                    run.stop.reason = run.should_stop_after_step(state, control, save_due=save_due)
                if save_due:
                    run.request_save("periodic")
                run.after_step(state, control)
                telemetry_due = time.monotonic() - self.last_telemetry >= self.telemetry_every_s
                # The saves too: with FSDP every rank takes part in gathering the adapter a save writes.
                decision = {"stop": run.stop.reason, "saves": list(run.pending_saves), "telemetry": telemetry_due}
            decision, locals_ = agree((local_stop, memory), decision)
            signalled = [stop_reason for stop_reason, _ in locals_]
            stop = decision["stop"] or next((reason for reason in signalled if reason), None)
            run.pending_saves = [] if stop else list(decision["saves"])  # stopping: the final save follows
            if stop:
                run.stop.reason = run.stop.reason or stop
                control.should_training_stop = True
                control.should_evaluate = False  # the final save matters more than one more eval
                return control
            several = args.world_size > 1
            if several and self.gather_memory:  # the figures every rank sent with this step's decision
                run.emit_telemetry(state.global_step, ranks=[figures for _, figures in locals_])
            if decision["telemetry"]:
                self.last_telemetry = time.monotonic()
                if not several:
                    run.emit_telemetry(state.global_step)
            self.gather_memory = several and decision["telemetry"]
            if not control.should_log:
                self.save_pending()
            # else the step's loss is logged next (on_log): saves wait for it, so the bundle's loss tail
            # includes the step it was saved at
            self.last_step_end = time.monotonic()
            return control

        def save_pending(self) -> None:
            """Run the saves this step asked for; their time is kept out of the next step's."""
            if self.run.pending_saves:
                self.run.save_pending()
                self.last_step_end = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:
                return
            now = time.monotonic()
            tokens = state.num_input_tokens_seen or 0
            elapsed = max(now - (self.last_log_time or now), 1e-9)
            tokens_per_s = (tokens - self.last_log_tokens) / elapsed if tokens else None
            batch_tokens = getattr(self.run.trainer, "loradeck_batch_tokens", 0)
            padding = padding_share(tokens - self.last_log_tokens, batch_tokens - self.last_batch_tokens) \
                if tokens else None
            rows = (state.global_step - self.last_log_step) * self.run.config.train.batch_size \
                * self.run.config.train.grad_accum
            mfu = self.run.utilisation(tokens_per_s, (tokens - self.last_log_tokens) / rows if rows else None)
            self.last_log_time, self.last_log_tokens, self.last_batch_tokens = now, tokens, batch_tokens
            self.last_log_step = state.global_step
            loss = float(logs["loss"])
            self.run.loss_tail.append([state.global_step, loss])
            event = self.run.events.emit(
                "step", step=state.global_step, loss=loss if math.isfinite(loss) else str(loss),
                lr=logs.get("learning_rate"), grad_norm=_finite(logs.get("grad_norm")),
                epoch=round(state.epoch or 0.0, 4), tokens_per_s=round(tokens_per_s, 1) if tokens_per_s else None,
                tokens_seen=tokens, padding=padding, mfu=round(mfu, 4) if mfu is not None else None,
                max_steps=state.max_steps, **dpo_step_fields(logs))
            if self.on_step:
                self.on_step(event)
            self.save_pending()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics = metrics or {}
            if "eval_loss" in metrics:
                self.run.events.emit("eval", step=state.global_step, eval_loss=float(metrics["eval_loss"]),
                                     seconds=metrics.get("eval_runtime"),
                                     **dpo_step_fields({k.removeprefix("eval_"): v for k, v in metrics.items()}))

    return RunDirectoryCallback


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)

