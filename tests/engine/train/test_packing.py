"""Packed batches: rows end to end with no padding, each row kept apart, the same loss and gradients as padded."""

import json

import pytest
import torch

from engine.run.events import read_events
from engine.train.batches import make_collator, packing_choice, packing_isolates_rows
from engine.train.run import run_training
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))


def rows(vocab, lengths=(7, 12, 5, 9)):
    generator = torch.Generator().manual_seed(1)
    out = []
    for length in lengths:
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})  # a masked prompt, a trained answer
    return out


def loss_and_grads(model, batch, num_items):
    model.zero_grad()
    model.train()
    loss = model(**batch, num_items_in_batch=num_items).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_packed_batch_has_the_loss_and_lora_gradients_of_the_same_rows_padded(lora_model, tiny_model_dir):
    batch_rows = rows(lora_model.get_input_embeddings().num_embeddings)
    padded = make_collator(0)(batch_rows)
    packed = make_collator(0, packed=True)(batch_rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in batch_rows)), "no padding at all"
    num_items = (padded["labels"][:, 1:] != -100).sum()
    assert int((packed["shift_labels"] != -100).sum()) == int(num_items), "the same tokens are trained"
    padded_loss, padded_grads = loss_and_grads(lora_model, padded, num_items)
    packed_loss, packed_grads = loss_and_grads(lora_model, packed, num_items)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, grad in padded_grads.items():
        # fp32 on CPU: equal up to summation order
        assert torch.allclose(packed_grads[name], grad, rtol=1e-4, atol=1e-6), name


def test_each_packed_row_attends_only_to_itself(lora_model):
    vocab = lora_model.get_input_embeddings().num_embeddings
    isolated, why = packing_isolates_rows(lora_model, vocab)
    assert isolated, why
    lora_model.base_model.model.config.use_cache = True  # a cache in the forward pass defeats the packed mask
    try:
        isolated, why = packing_isolates_rows(lora_model, vocab)
        assert not isolated and "influence each other" in why
        packed, reason = packing_choice("on", "cpu", lora_model, vocab)
        assert not packed and reason.startswith("not packing:") and "padded" in reason
    finally:
        lora_model.base_model.model.config.use_cache = False
    assert packing_choice("auto", "cpu", lora_model, vocab)[0] is False, "auto packs on a GPU only"


def loradeck_status(run_dir) -> str:
    import contextlib
    import io

    from tui.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", str(run_dir)]) == 0
    return out.getvalue()


def test_a_packed_run_trains_without_padding_and_matches_the_padded_run(tiny_model_dir, tmp_path):
    losses = {}
    for packing in ("on", "off"):
        run_dir = tmp_path / packing
        config = tiny_config(tiny_model_dir, "train.max_steps=3", "train.batch_size=4", f"train.packing={packing}",
                             "lora.dropout=0")
        assert run_training(run_dir, config) == 0
        events = read_events(run_dir / "events.jsonl")
        loaded = next(e for e in events if e["type"] == "model_loaded")
        assert loaded["packing"] is (packing == "on"), loaded["packing_reason"]
        steps = [e for e in events if e["type"] == "step"]
        losses[packing] = [e["loss"] for e in steps]
        if packing == "on":
            assert all(e["padding"] == 0 for e in steps) and "attends only to itself" in loaded["packing_reason"]
            assert steps[-1]["tokens_seen"] > 0
        # on a CPU there is no dense peak to measure against: MFU is unknown, never a guessed number
        assert loaded["peak_flops"] is None and all("mfu" in e and e["mfu"] is None for e in steps)
        status = loradeck_status(run_dir)
        assert "MFU —" in status and f"padding {'0.0%' if packing == 'on' else ''}" in status
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4), "same rows, same order, same losses"


def test_the_cuda_allocator_grows_segments_unless_the_user_chose(monkeypatch):
    from engine.train.run import settle_cuda_allocator

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    assert settle_cuda_allocator() == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    assert settle_cuda_allocator().endswith("(yours)")
    import os
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def test_a_token_budget_plan_is_the_seeds_and_covers_every_row_once_per_epoch():
    from engine.train.batches import TokenBudgetPlan

    lengths = [((row * 37) % 90) + 10 for row in range(200)]
    plan = TokenBudgetPlan(lengths, budget=256, seed=5)
    first = plan.batches(0)
    assert first == TokenBudgetPlan(lengths, 256, 5).batches(0), "a pure function of the seed"
    assert plan.batches(1) != first
    assert sorted(row for batch in first for row in batch) == list(range(200))
    assert all(sum(lengths[row] for row in batch) <= 256 for batch in first)
    assert sum(sum(lengths[row] for row in batch) for batch in first) / len(first) > 0.7 * 256, "batches are full"


def test_a_run_with_a_token_budget_fills_its_micro_batches_and_refuses_a_budget_below_the_longest_row(
        tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, "train.max_steps=-1", "train.epochs=1", "train.packing=on",
                         "train.tokens_per_batch=400", "data.eval_path=", "data.eval_split=0")
    assert run_training(tmp_path / "budget", config) == 0
    events = read_events(tmp_path / "budget" / "events.jsonl")
    loaded = next(e for e in events if e["type"] == "model_loaded")
    assert "micro-batches of up to 400 tokens" in loaded["packing_reason"]
    steps = [e for e in events if e["type"] == "step"]
    seen = [0] + [e["tokens_seen"] for e in steps]
    assert all(0 < after - before <= 400 for before, after in zip(seen, seen[1:]))
    assert len(steps) == loaded["max_steps"] and seen[-1] == loaded["train_tokens"], "one epoch: every token once"
    state = json.loads((tmp_path / "budget" / "handoff" / "state.json").read_text())
    assert state["samples_consumed"] == loaded["train_rows"]

    too_small = tiny_config(tiny_model_dir, "train.packing=on", "train.tokens_per_batch=20")
    assert run_training(tmp_path / "small", too_small) != 0
    error = [e for e in read_events(tmp_path / "small" / "events.jsonl") if e["type"] == "error"][-1]["message"]
    assert error.startswith("train.tokens_per_batch = 20 is smaller than the longest training row,") and \
        "data.max_length = 128" in error and "\n" not in error


def test_a_run_with_a_token_budget_resumes_into_exactly_the_uninterrupted_run(tiny_model_dir, tmp_path):
    from engine.train.handoff import open_bundle
    from tests.engine.train.test_session import _losses, _stop_at

    config = tiny_config(tiny_model_dir, "train.max_steps=8", "train.packing=on", "train.tokens_per_batch=300",
                         "data.eval_path=", "data.eval_split=0", "session.with_optimizer=true", "lora.dropout=0")
    assert run_training(tmp_path / "whole", config) == 0
    assert run_training(tmp_path / "part1", config, run_class=_stop_at(3)) == 0
    bundle = open_bundle(tmp_path / "part1" / "handoff")
    assert run_training(tmp_path / "part2", bundle.config, resume_from=bundle.path) == 0
    whole, pieces = _losses(tmp_path / "whole"), {**_losses(tmp_path / "part1"), **_losses(tmp_path / "part2")}
    assert sorted(pieces) == list(range(1, 9))
    assert max(abs(pieces[step] - whole[step]) for step in range(4, 9)) < 1e-5, "the same batches, in order"
