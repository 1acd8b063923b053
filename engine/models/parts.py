"""Where a causal LM keeps its parts: the decoder stack and the output head, under PEFT or not.

Training's chunked loss and evaluation's held-out loss both run the decoder once
and the head a chunk of positions at a time, so neither builds the full logits.
"""

from __future__ import annotations

from typing import Any

LOGITS_CHUNK_TOKENS = 1024  # positions whose logits exist at once


def chunked_loss_parts(model) -> tuple[Any, Any] | None:
    """(decoder, output head) of a causal LM (under PEFT or not), or None when its loss is not plain
    cross-entropy over `head(decoder(...))` (logit soft-capping or scaling) and the model must compute it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    if decoder is None or head is None or config is None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None
    return decoder, head
