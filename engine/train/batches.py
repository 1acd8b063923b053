"""Batches: which rows each step sees, in an order that is a pure function of the seed, and how they are padded."""

from __future__ import annotations

import math
from typing import Any

from engine.config import RunConfig


class EpochShuffleSampler:
    """Shuffles the rows with a fresh permutation per epoch drawn from (seed, epoch) alone.

    The order is a pure function of the seed and epoch, so a resumed run on any
    machine replays it exactly and skips the samples it already saw.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.size


GROUP_WINDOW_BATCHES = 16  # rows are sorted by length within windows this many batches long


class LengthGroupedSampler(EpochShuffleSampler):
    """Batches of rows of similar length, so less of each batch is padding; still a pure function of the seed.

    Each epoch takes the seed's permutation, sorts each window of `GROUP_WINDOW_BATCHES` batches by length, cuts
    it into batches and shuffles the batches (seeded), so lengths do not drift through the epoch. A short last
    batch stays last, so the data loader's batch boundaries are the ones planned here. Every row is seen once
    per epoch, and a resumed run replays the same order.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window_batches: int = GROUP_WINDOW_BATCHES):
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.window = self.batch_size * max(1, window_batches)

    def order(self, epoch: int) -> list[int]:
        import torch

        shuffled = super().order(epoch)
        batches = []
        for begin in range(0, len(shuffled), self.window):
            window = sorted(shuffled[begin:begin + self.window], key=lambda row: self.lengths[row], reverse=True)
            batches += [window[k:k + self.batch_size] for k in range(0, len(window), self.batch_size)]
        full = [batch for batch in batches if len(batch) == self.batch_size]
        short = [batch for batch in batches if len(batch) < self.batch_size]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 500_009)
        return [row for index in torch.randperm(len(full), generator=generator).tolist() for row in full[index]] + \
            [row for batch in short for row in batch]


class TokenBudgetPlan:
    """Micro-batches filled with rows up to a token budget, in the seed's order: a pure function of (seed,
    epoch), every row once per epoch, so a resumed run replays the same batches. Rows are taken in order; a
    batch closes when the next row would pass the budget."""

    def __init__(self, lengths: list[int], budget: int, seed: int):
        self.lengths = list(lengths)
        self.budget = budget
        self.order = EpochShuffleSampler(len(lengths), seed)
        self._planned: tuple[int, list[list[int]]] | None = None  # the last epoch asked for: len() and iter() ask

    def batches(self, epoch: int) -> list[list[int]]:
        if self._planned is None or self._planned[0] != epoch:
            self._planned = (epoch, self._plan(epoch))
        return self._planned[1]

    def _plan(self, epoch: int) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        used = 0
        for row in self.order.order(epoch):
            if current and used + self.lengths[row] > self.budget:
                batches.append(current)
                current, used = [], 0
            current.append(row)
            used += self.lengths[row]
        if current:
            batches.append(current)
        return batches


def check_token_budget(budget: int, lengths: list[int], max_length: int) -> None:
    """ConfigError when a row (after truncation to `max_length`) is longer than the token budget."""
    from engine.errors import ConfigError

    longest = max(lengths, default=0)
    if budget and longest > budget:
        raise ConfigError(f"train.tokens_per_batch = {budget} is smaller than the longest training row, {longest} "
                          f"tokens after truncation to data.max_length = {max_length} — raise tokens_per_batch to "
                          f"at least {longest}, or lower data.max_length")


def padding_share(real_tokens: int, batch_tokens: int) -> float | None:
    """The fraction of the tokens in padded batches that are padding (None before any batch)."""
    return round(1.0 - real_tokens / batch_tokens, 4) if batch_tokens > 0 else None


def make_collator(pad_token_id: int, *, packed: bool = False):
    """Right-pad input_ids/labels to the longest sample in the batch, or with `packed` lay the rows end to end.

    A packed batch is one sequence with no padding: position ids restart at each row (transformers then builds a
    block-diagonal causal mask, so no row attends to another; `packing_isolates_rows` verifies it on the real
    model), and `shift_labels` holds each row's own next-token targets, so the last token of one row is never
    trained to predict the first of the next and the loss counts exactly the tokens the padded batch would.
    """
    import torch

    def collate_packed(features: list[dict[str, Any]]) -> dict[str, Any]:
        input_ids, labels, shift_labels, positions = [], [], [], []
        for feature in features:
            row_labels = list(feature["labels"])
            input_ids += feature["input_ids"]
            labels += row_labels
            shift_labels += row_labels[1:] + [-100]
            positions += range(len(feature["input_ids"]))
        return {"input_ids": torch.tensor([input_ids]), "labels": torch.tensor([labels]),
                "shift_labels": torch.tensor([shift_labels]), "position_ids": torch.tensor([positions])}

    if packed:
        return collate_packed

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        longest = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        attention = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"])
            labels[row, :length] = torch.as_tensor(feature["labels"])
            attention[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    return collate


def planned_steps(config: RunConfig, train_rows: int, world_size: int = 1, batches_per_epoch: int | None = None) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over the data (`batches_per_epoch` when a token
    budget, not batch_size, decides the batches)."""
    if config.train.max_steps > 0:
        return config.train.max_steps
    batches = batches_per_epoch or math.ceil(train_rows / (config.train.batch_size * world_size))
    return max(1, math.ceil(batches / config.train.grad_accum * config.train.epochs))



def packing_isolates_rows(model, vocab_size: int) -> tuple[bool, str]:
    """Whether this model, as loaded, keeps packed rows apart: a short row's logits packed behind another row
    must equal its logits alone. (False, why) when they differ or the forward fails, so packing falls back to
    padded batches instead of silently mixing rows."""
    import torch

    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab_size, (7,), generator=generator).tolist()
    second = torch.randint(0, vocab_size, (5,), generator=generator).tolist()
    collate = make_collator(0, packed=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = collate([{"input_ids": first, "labels": first}, {"input_ids": second, "labels": second}])
            alone = collate([{"input_ids": second, "labels": second}])
            together = model(input_ids=packed["input_ids"].to(device),
                             position_ids=packed["position_ids"].to(device)).logits[0, len(first):].float()
            apart = model(input_ids=alone["input_ids"].to(device),
                          position_ids=alone["position_ids"].to(device)).logits[0].float()
    except Exception as exc:  # an attention path that cannot take packed input at all
        return False, f"a packed forward pass failed ({type(exc).__name__}: {str(exc).strip()[:120]})"
    finally:
        model.train(was_training)
    difference = float((together - apart).abs().max())
    scale = float(apart.abs().max()) or 1.0
    if difference > 1e-2 * scale:
        return False, (f"rows packed together influence each other under this attention implementation "
                       f"(logits differ by {difference:.3g})")
    return True, f"each row attends only to itself (checked: logits equal within {difference:.1e})"


def packing_choice(setting: str, device: str, model, vocab_size: int) -> tuple[bool, str]:
    """(pack or not, why) for `train.packing`: auto packs on CUDA; either way only after the isolation check."""
    if setting == "off" or (setting == "auto" and device != "cuda"):
        return False, "train.packing = off" if setting == "off" else \
            "auto: padded, length-grouped batches on a CPU (packing pays on a GPU)"
    isolated, why = packing_isolates_rows(model, vocab_size)
    if not isolated:
        return False, f"not packing: {why}; using padded, length-grouped batches"
    return True, why
