"""Length-grouped batches: less padding, every row once per epoch, an order fixed by the seed, and no change to any
sample's loss."""

import json

import pytest

from engine.train.batches import EpochShuffleSampler, LengthGroupedSampler, make_collator, padding_share
from tests.conftest import real_dataset


def padding_of(order: list[int], lengths: list[int], batch_size: int) -> float:
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    real = sum(lengths[row] for batch in batches for row in batch)
    padded = sum(max(lengths[row] for row in batch) * len(batch) for batch in batches)
    return padding_share(real, padded)


def test_every_row_once_per_epoch_in_an_order_fixed_by_seed_and_epoch():
    lengths = [(row * 37) % 301 + 5 for row in range(203)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = sampler.order(0)
    assert sorted(first) == list(range(203))
    assert LengthGroupedSampler(lengths, batch_size=8, seed=3).order(0) == first
    assert sampler.order(1) != first and sorted(sampler.order(1)) == list(range(203))
    assert LengthGroupedSampler(lengths, batch_size=8, seed=4).order(0) != first
    sampler.set_epoch(1)
    assert list(sampler) == sampler.order(1)


def test_the_short_batch_comes_last_so_batch_boundaries_hold():
    lengths = list(range(1, 21))  # 20 rows, batches of 8: two full batches and one of 4
    order = LengthGroupedSampler(lengths, batch_size=8, seed=0, window_batches=3).order(0)
    batches = [order[k:k + 8] for k in range(0, 20, 8)]
    for batch in batches:  # each batch is one window's sorted slice: its lengths sit close together
        assert max(lengths[row] for row in batch) - min(lengths[row] for row in batch) < len(batch)
    assert len(batches[-1]) == 4 and sorted(lengths[row] for row in batches[-1]) == [1, 2, 3, 4]


def test_grouping_cuts_padding_on_real_alpaca_lengths(smollm_tokenizer):
    rows = json.loads(real_dataset("alpaca_en_demo.json").read_text())
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    lengths = [len(ids) for ids in smollm_tokenizer(texts)["input_ids"]]
    shuffled = padding_of(EpochShuffleSampler(len(lengths), 42).order(0), lengths, 8)
    grouped = padding_of(LengthGroupedSampler(lengths, 8, 42).order(0), lengths, 8)
    assert shuffled > 0.4 and grouped < shuffled / 3, (shuffled, grouped)


def test_a_samples_loss_is_the_same_alone_and_in_a_padded_batch(tiny_model_dir, smollm_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from engine.data.readers import to_conversations, load_dataset_file
    from engine.data.tokenize import tokenize_conversations
    from tests.conftest import SAMPLE_DATA

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    samples = tokenize_conversations(smollm_tokenizer, to_conversations(load_dataset_file(
        SAMPLE_DATA / "demo_train.jsonl"))[:40], 512)
    short, long = min(samples, key=lambda s: len(s.input_ids)), max(samples, key=lambda s: len(s.input_ids))
    assert len(long.input_ids) > len(short.input_ids) + 5
    collate = make_collator(smollm_tokenizer.pad_token_id)

    def token_losses(batch, row):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[row]
        labels = batch["labels"][row]
        losses = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], reduction="none", ignore_index=-100)
        return losses[labels[1:] != -100]

    def feature(sample):
        return {"input_ids": sample.input_ids, "labels": sample.labels}

    alone = token_losses(collate([feature(short)]), 0)
    padded = token_losses(collate([feature(long), feature(short)]), 1)
    assert alone.numel() > 0 and torch.allclose(alone, padded, atol=1e-5), (alone - padded).abs().max()


@pytest.mark.parametrize("real, batch, expected", [(0, 0, None), (75, 100, 0.25), (100, 100, 0.0)])
def test_padding_share(real, batch, expected):
    assert padding_share(real, batch) == expected
