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

