"""The trainers' shared part (`trainer_mixin`: data order, stop-aware eval, schedule continuation), TRL's
`SFTTrainer` with it, and the training arguments every method shares, chosen for the device."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import RunConfig
from engine.train.batches import EpochShuffleSampler, LengthGroupedSampler

if TYPE_CHECKING:
    from engine.train.run import TrainingRun


class _EvalInterrupted(Exception):
    """Raised inside eval when the run must stop; never escapes the trainer."""


def trainer_mixin():
    """`LoradeckTrainerMixin`: what every loradeck trainer (SFT, DPO) adds to TRL's — a seed-determined data order,
    the padded-token count, eval that a stop interrupts, and a LR schedule that continues across a resume."""

    class LoradeckTrainerMixin:
        loradeck_run: TrainingRun | None = None
        loradeck_lengths: list[int] | None = None  # token count per training row: batches grouped by length
        loradeck_batch_tokens = 0  # tokens in the padded training batches so far (padding included)

        loradeck_token_plan = None  # a TokenBudgetPlan: micro-batches of up to N tokens instead of batch_size rows

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.loradeck_token_plan is not None:
                return planned_batches_class()(self.loradeck_token_plan)
            if self.loradeck_lengths is not None and len(self.loradeck_lengths) == len(dataset):
                # Grouped by the rows of one optimizer step over every rank: accelerate hands each rank its slice,
                # so N processes (or N accumulated micro-batches) see the rows one process with N times the batch
                # would, and a bundle resumes under another process count with the same sequence.
                args = self.args
                return LengthGroupedSampler(self.loradeck_lengths, args.per_device_train_batch_size
                                            * args.world_size * args.gradient_accumulation_steps, args.seed)
            return EpochShuffleSampler(len(dataset), self.args.seed)

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.loradeck_batch_tokens += inputs["input_ids"].numel()  # shape only: no device sync
            return super().training_step(model, inputs, num_items_in_batch)

        def prediction_step(self, *args, **kwargs):
            if self.loradeck_run is not None and self.loradeck_run.stop.reason:
                raise _EvalInterrupted()
            return super().prediction_step(*args, **kwargs)

        def evaluate(self, *args, **kwargs):
            started = time.monotonic()
            try:
                return super().evaluate(*args, **kwargs)
            except _EvalInterrupted:
                # A signal or the deadline arrived mid-eval: drop the eval, stop, and save now.
                self.control.should_training_stop = True
                return {}
            finally:
                elapsed = time.monotonic() - started
                if self.loradeck_run is not None:
                    self.loradeck_run.eval_seconds.append(elapsed)
                    self.loradeck_run.eval_overhead += elapsed

        def _load_optimizer_and_scheduler(self, checkpoint):
            import torch

            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None:
                return
            scheduler_file = os.path.join(checkpoint, "scheduler.pt")
            if not os.path.isfile(os.path.join(checkpoint, "optimizer.pt")) and os.path.isfile(scheduler_file) \
                    and self.lr_scheduler is not None:
                # Adapter-only bundle: a fresh optimizer, but the LR schedule continues where it stopped.
                self.lr_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))
                for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
                    group["lr"] = lr
            if getattr(self, "loradeck_schedule_from", None) is not None:
                self._continue_schedule(self.loradeck_schedule_from)

        def _continue_schedule(self, step: int) -> None:
            """The total steps changed since the bundle was saved: from `step` on, the configured shape over the
            steps left — scaled to start at the rate the bundle reached (no warmup, no jump), or, when its
            schedule had ended (`loradeck_schedule_warmup` set by `schedule_change`), a new schedule from the
            configured rate after that many warmup steps."""
            import torch
            from transformers import get_scheduler

            left = max(1, self.args.max_steps - step)
            warmup = getattr(self, "loradeck_schedule_warmup", None)
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            shape = get_scheduler(self.args.lr_scheduler_type, probe, num_warmup_steps=warmup or 0,
                                  num_training_steps=left).lr_lambdas[0]
            reached = [group["lr"] for group in self.optimizer.param_groups]
            scales = [1.0 if warmup is not None else (lr / base if base else 0.0)
                      for lr, base in zip(reached, self.lr_scheduler.base_lrs)]
            self.lr_scheduler.lr_lambdas = [(lambda current, scale=scale: scale * shape(current - step))
                                            for scale in scales]
            for group, scale, base in zip(self.optimizer.param_groups, scales, self.lr_scheduler.base_lrs):
                group["lr"] = base * scale * shape(0)  # the next step's rate (the scheduler moves after it)
            self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    return LoradeckTrainerMixin


def loradeck_trainer_class():
    """`LoradeckSFTTrainer`, built on first use (TRL is imported only inside a training process)."""
    from trl import SFTTrainer

    class LoradeckSFTTrainer(trainer_mixin(), SFTTrainer):
        """SFTTrainer with loradeck's mixin and the model's own loss.

        TRL computes its loss through a fused log-prob head that also feeds entropy
        and token-accuracy metrics; the model's own cross-entropy is the same loss
        without that per-step overhead (see bench/train_throughput.py).
        """

        loradeck_chunked_loss = False  # the run turns it on for the transformers backend

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from transformers import Trainer

            from engine.models.parts import chunked_loss_parts
            from engine.train.loss import chunked_causal_lm_loss

            parts = chunked_loss_parts(self.accelerator.unwrap_model(model)) if self.loradeck_chunked_loss else None
            if parts is None or "labels" not in inputs or (return_outputs and not self.args.prediction_loss_only):
                return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            wrapped = model is not self.accelerator.unwrap_model(model)  # DDP: its forward syncs the gradients
            loss = chunked_causal_lm_loss(*parts, inputs, num_items_in_batch, through=model if wrapped else None)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales a summed loss
            return (loss, {"loss": loss}) if return_outputs else loss

    return LoradeckSFTTrainer


def planned_batches_class():
    """A batch sampler yielding a TokenBudgetPlan's batches. It is a `BatchRebalanceSampler` so the Trainer
    passes it to the DataLoader as its batch sampler (variable rows per batch); one process only."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    class PlannedBatches(BatchRebalanceSampler):
        def __init__(self, plan):  # noqa: D107 (the base class's arguments are for its own algorithm)
            self.plan = plan
            self.sampler = plan.order  # accelerate sets the epoch through `.sampler.set_epoch` when it wraps us

        def set_epoch(self, epoch: int) -> None:
            self.sampler.set_epoch(epoch)

        def __iter__(self):
            return iter(self.plan.batches(self.sampler.epoch))

        def __len__(self) -> int:
            return len(self.plan.batches(self.sampler.epoch))

    return PlannedBatches


def common_training_args(config: RunConfig, output_dir: Path, has_eval: bool, device: str, torch_dtype) -> dict:
    """The TrainingArguments every method shares, chosen for the device rather than TRL's GPU defaults."""
    import torch

    from engine.train.distributed import fsdp_training_args, shards_model

    report_to = list(config.train.report_to) or "none"
    sharded = shards_model(config.distributed.strategy)
    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.train.batch_size,
        per_device_eval_batch_size=config.train.batch_size,
        gradient_accumulation_steps=config.train.grad_accum,
        learning_rate=config.train.learning_rate,
        lr_scheduler_type=config.train.lr_scheduler,
        warmup_steps=config.train.warmup_steps,
        weight_decay=config.train.weight_decay,
        max_grad_norm=config.train.max_grad_norm if config.train.max_grad_norm > 0 else None,
        num_train_epochs=config.train.epochs,
        max_steps=config.train.max_steps,
        logging_steps=config.train.log_every,
        logging_first_step=True,
        save_strategy="no",  # checkpoints are ours: atomic, with state.json
        eval_strategy="steps" if has_eval and config.train.eval_every else "no",
        eval_steps=config.train.eval_every or None,
        report_to=report_to,
        # bf16/fp16 only where the device computes them natively (choose_dtype decided).
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        gradient_checkpointing=config.train.gradient_checkpointing,
        seed=config.train.seed,
        data_seed=config.train.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        max_length=config.data.max_length,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,  # every LoRA weight takes part in every step
        use_cpu=device == "cpu",
        save_only_model=True,
    )
    if sharded:
        args.update(fsdp_training_args())
    return args


def build_sft_config(config: RunConfig, output_dir: Path, has_eval: bool, device: str, torch_dtype,
                     packed: bool = False):
    """SFTConfig with defaults chosen for the device, not TRL's GPU defaults."""
    from trl import SFTConfig

    return SFTConfig(
        **common_training_args(config, output_dir, has_eval, device, torch_dtype),
        dataset_kwargs={"skip_prepare_dataset": True},
        # A packed batch has no padding (and no attention mask to find it by): every token is real.
        include_num_input_tokens_seen="all" if packed else "non_padding",
        prediction_loss_only=True,  # eval reports its loss only: no logits gathered over the vocabulary
    )


def to_dataset(samples):
    """A `datasets.Dataset` of tokenized samples (input_ids and labels), as the trainer takes it."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]})

