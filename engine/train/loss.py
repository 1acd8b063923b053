"""The training loss without the full logits: cross-entropy over the trained positions only, a chunk at a time.

A causal LM's own loss builds fp32 logits for every position over the whole
vocabulary (batch × length × 49k–128k floats) and keeps them for backward.
Here the decoder's hidden states are taken once, the positions whose label is
ignored (prompts, padding, the end of each packed row) are dropped, and the
output head plus cross-entropy run over the rest in chunks of
`LOGITS_CHUNK_TOKENS`, each recomputed in backward (activation checkpointing),
so at most one chunk of logits exists at a time. The loss and the LoRA
gradients equal the model's own (tests/engine/train/test_loss.py).
"""

from __future__ import annotations

from typing import Any

from engine.data.tokenize import IGNORE_INDEX
from engine.models.parts import LOGITS_CHUNK_TOKENS


def uses_chunked_loss(backend: str) -> bool:
    """Whether training on this backend computes its loss here: transformers + peft do; unsloth brings its own
    fused loss."""
    return backend == "transformers"


def _chunk_loss(head, hidden, targets):
    import torch.nn.functional as functional

    return functional.cross_entropy(head(hidden).float(), targets, reduction="sum")


def hidden_states_through(wrapper, decoder, forward_inputs: dict[str, Any]):
    """The decoder's last hidden states, computed by calling `wrapper` (the model as DistributedDataParallel
    wraps it) so DDP's gradient all-reduce is armed; the head runs on one position only (`logits_to_keep=1`)."""
    captured = []
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(output.last_hidden_state))
    try:
        wrapper(**forward_inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1]


def chunked_causal_lm_loss(decoder, head, inputs: dict[str, Any], num_items_in_batch=None,
                           chunk_tokens: int = LOGITS_CHUNK_TOKENS, *, through=None):
    """Next-token cross-entropy of a batch (padded, or packed with `shift_labels`), summed over trained
    positions and divided by `num_items_in_batch` (the trainer's count across accumulated micro-batches) or by
    this batch's trained positions. With several processes `through` is the DDP-wrapped model: a forward that
    bypassed it would leave every rank's gradients unsynchronised."""
    import torch
    import torch.nn.functional as functional
    from torch.utils.checkpoint import checkpoint

    labels = inputs["labels"]
    targets = inputs.get("shift_labels")
    if targets is None:
        targets = functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    forward_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "shift_labels")}
    hidden = (hidden_states_through(through, decoder, forward_inputs) if through is not None
              else decoder(**forward_inputs, use_cache=False).last_hidden_state)
    targets = targets.reshape(-1).to(hidden.device)
    trained = targets != IGNORE_INDEX
    hidden, targets = hidden.reshape(-1, hidden.shape[-1])[trained], targets[trained]
    total = hidden.sum().float() * 0.0  # keeps the graph when no position of this batch is trained
    for start in range(0, targets.shape[0], chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss, head, hidden[start:end], targets[start:end], use_reentrant=False)
    count = num_items_in_batch if num_items_in_batch is not None else trained.sum()
    return total / count.to(total.device).clamp(min=1) if torch.is_tensor(count) else total / max(int(count), 1)
