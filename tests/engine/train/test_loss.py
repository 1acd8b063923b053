"""The chunked loss: the model's own loss and LoRA gradients, without ever holding the full logits."""

import pytest
import torch

from engine.train.batches import make_collator
from engine.models.parts import chunked_loss_parts
from engine.train.loss import chunked_causal_lm_loss
from tests.engine.train.test_packing import lora_model, rows  # noqa: F401 (a fixture)


def own_and_chunked(model, batch, num_items, chunk_tokens):
    model.train()
    model.zero_grad()
    own = model(**batch, num_items_in_batch=num_items).loss
    own.backward()
    own_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    chunked = chunked_causal_lm_loss(*chunked_loss_parts(model), batch, num_items, chunk_tokens=chunk_tokens)
    chunked.backward()
    chunked_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(own.detach()), own_grads, float(chunked.detach()), chunked_grads


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("with_count", [True, False], ids=["accumulated-count", "batch-mean"])
def test_the_chunked_loss_equals_the_models_own_with_the_same_lora_gradients(lora_model, packed, with_count):
    batch = make_collator(0, packed=packed)(rows(lora_model.get_input_embeddings().num_embeddings))
    trained = int((batch["labels"][:, 1:] != -100).sum()) if not packed else int((batch["shift_labels"] != -100).sum())
    num_items = torch.tensor(trained + 7) if with_count else None  # as if other micro-batches had 7 more tokens
    seen = []
    head = chunked_loss_parts(lora_model)[1]
    hook = head.register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    try:
        own, own_grads, chunked, chunked_grads = own_and_chunked(lora_model, batch, num_items, chunk_tokens=8)
    finally:
        hook.remove()
    assert chunked == pytest.approx(own, rel=1e-5)
    for name, grad in own_grads.items():
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-4, atol=1e-6), name
    chunk_calls = [shape for shape in seen if len(shape) == 2]
    assert chunk_calls and max(shape[0] for shape in chunk_calls) <= 8, "the head never saw more than a chunk"
    assert sum(shape[0] for shape in chunk_calls) == 2 * trained, "only trained positions (forward + recompute)"


def test_a_batch_with_nothing_to_train_gives_zero_loss_and_zero_gradients(lora_model):
    batch = make_collator(0)([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}])
    loss = chunked_causal_lm_loss(*chunked_loss_parts(lora_model), batch)
    lora_model.zero_grad()
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in lora_model.parameters() if p.requires_grad)
