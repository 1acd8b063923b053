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


def padding_share(real_tokens: int, batch_tokens: int) -> float | None:
    """The fraction of the tokens in padded batches that are padding (None before any batch)."""
    return round(1.0 - real_tokens / batch_tokens, 4) if batch_tokens > 0 else None


def make_collator(pad_token_id: int):
    """Right-pad input_ids/labels to the longest sample in the batch."""
    import torch

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


def planned_steps(config: RunConfig, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take: max_steps, or epochs over the data."""
    if config.train.max_steps > 0:
        return config.train.max_steps
    return max(1, math.ceil(math.ceil(train_rows / (config.train.batch_size * world_size))
                            / config.train.grad_accum * config.train.epochs))

