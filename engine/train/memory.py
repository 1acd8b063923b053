"""What one training step holds in memory, before it is run: the preflight's estimate and `gradient_checkpointing =
"auto"`'s decision.

The estimate counts, per token and decoder layer, the tensors autograd keeps for backward in a Llama-style layer
under LoRA (measured with saved-tensor hooks: tests/engine/train/test_memory.py):

- each RMSNorm keeps its input in fp32 (it normalises in fp32 whatever the weights' dtype);
- attention keeps q, k and v (k and v expanded to every head) and its output, in the compute dtype; an eager
  implementation also keeps its fp32 softmax and that cast back (batch × heads × length² per layer);
- the MLP keeps the gate and up projections and the activation, in the compute dtype;
- each LoRA-wrapped linear keeps its input cast to the adapter's dtype (fp32), or with LoRA dropout the dropped
  copy plus the dropout mask (one byte on CUDA, the adapter's dtype on CPU), and the rank-sized middle.

Frozen base weights keep nothing (their gradient is not needed). With checkpointing only each layer's input is
kept, and one layer's activations come back during backward. The loss holds either one chunk of logits at a
time (engine/train/loss.py) or, when the model computes it, the logits over the whole vocabulary in its dtype,
their fp32 copy and the log-softmax. On an NVIDIA H200 this lands at 0.98× and 0.92× the measured peaks of a
1.7B-shape bf16 LoRA run and an 8B-shape NF4 QLoRA run (test_memory.py keeps those as fixtures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.models.parts import LOGITS_CHUNK_TOKENS

FITS, TIGHT, WONT_FIT = "fits", "tight", "won't fit"


def verdict_for(need: float, available: float) -> str:
    """fits below 80% of what is available, tight below 95%, else won't fit: the rule for the preflight's
    verdict and for turning checkpointing on."""
    ratio = need / available if available else float("inf")
    return FITS if ratio < 0.8 else TIGHT if ratio < 0.95 else WONT_FIT


@dataclass(frozen=True)
class MemoryShape:
    """What decides a training step's memory: the model's shape and dtypes, and its LoRA layers."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    head_dim: int
    vocab: int
    weights_bytes: int  # everything the model holds before training: the frozen base and the adapter
    lora_params: int  # trainable parameters
    lora_element_bytes: int  # the adapter's dtype (peft keeps adapters in fp32 under a bf16 base)
    lora_inputs: tuple[int, ...]  # input width of each LoRA-wrapped linear in one decoder layer
    lora_rank: int
    lora_dropout: bool
    compute_bytes: int  # activations' element size (bf16: 2)
    residual_bytes: int  # hidden states between layers (4 when the embeddings were upcast to fp32)
    head_bytes: int  # the output head's logits
    eager_attention: bool = False


@dataclass(frozen=True)
class MemoryEstimate:
    """One step's peak, in bytes, by part."""

    weights: int
    lora_state: int  # LoRA gradients and AdamW's two fp32 moments
    activations: int  # what backward keeps, the loss's logits included
    total: int


def activation_bytes_per_token(shape: MemoryShape, *, device: str, length: int) -> int:
    """Bytes autograd keeps per token in one decoder layer without checkpointing (`length`: the padded row
    length, for eager attention's length² scores)."""
    compute = shape.compute_bytes
    norms = 2 * 4 * shape.hidden
    attention = 4 * shape.heads * shape.head_dim * compute
    if shape.eager_attention:
        attention += shape.heads * length * (4 + compute)
    mlp = 3 * shape.intermediate * compute
    mask = (1 if device.startswith("cuda") else shape.lora_element_bytes) if shape.lora_dropout else 0
    lora = sum(width * (shape.lora_element_bytes + mask) + shape.lora_rank * shape.lora_element_bytes
               for width in shape.lora_inputs)
    return norms + attention + mlp + lora


def estimate_step_memory(shape: MemoryShape, *, positions: int, length: int, trained_positions: int | None = None,
                         checkpointing: bool, chunked_loss: bool, device: str) -> MemoryEstimate:
    """The peak of one forward + backward + AdamW step over a micro-batch of `positions` tokens (rows × padded
    `length`, or one packed row), before the allocator's own overhead."""
    trained = positions if trained_positions is None else trained_positions
    lora_state = shape.lora_params * (shape.lora_element_bytes + 8)
    per_layer = activation_bytes_per_token(shape, device=device, length=length) * positions
    final_norm = 4 * shape.hidden * positions
    if chunked_loss:  # the trained positions' hidden states, and one chunk's logits, fp32 copy and log-softmax
        loss = trained * shape.hidden * shape.compute_bytes + \
            min(trained, LOGITS_CHUNK_TOKENS) * shape.vocab * (shape.head_bytes + 8)
    else:
        loss = positions * shape.vocab * (8 + (shape.head_bytes if shape.head_bytes != 4 else 0))
    if checkpointing:  # each layer's input kept; one layer recomputed in backward, after the loss is gone
        kept = shape.layers * positions * shape.hidden * shape.residual_bytes + final_norm
        activations = kept + max(loss, per_layer)
    else:
        activations = shape.layers * per_layer + final_norm + loss
    return MemoryEstimate(weights=shape.weights_bytes, lora_state=lora_state, activations=activations,
                          total=shape.weights_bytes + lora_state + activations)


def longest_batch(samples, rows: int, pad_token_id: int, *, packed: bool = False, tokens_per_batch: int = 0):
    """The worst micro-batch the run will meet: the `rows` longest samples, padded to the longest or laid end to
    end (`packed`); with a token budget, the longest samples that fill it."""
    from engine.train.batches import make_collator

    ordered = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)
    if packed and tokens_per_batch:
        chosen, total = [], 0
        for sample in ordered:
            if total + len(sample.input_ids) <= tokens_per_batch:
                chosen.append(sample)
                total += len(sample.input_ids)
        chosen = chosen or ordered[:1]
    else:
        chosen = ordered[:rows]
        while len(chosen) < rows:
            chosen.append(chosen[0])
    return make_collator(pad_token_id, packed=packed)([{"input_ids": s.input_ids, "labels": s.labels}
                                                       for s in chosen])


@dataclass
class StepPlan:
    """The worst micro-batch, what one step over it will hold, and whether checkpointing is on (and why)."""

    batch: dict[str, Any]
    rows: int
    shape: MemoryShape
    estimate: MemoryEstimate
    need: int  # what one device needs by the estimate (its shard of the model under FSDP)
    available: int
    checkpointing: bool
    checkpointing_reason: str
    chunked_loss: bool


def plan_step(config, model, samples, pad_token_id: int, *, device: str, dtype, backend: str, packed: bool,
              processes: int) -> StepPlan:
    """Estimate the run's worst step on this device and settle `train.gradient_checkpointing`: "auto" turns it
    on when the step would not fit without it (the preflight's verdict rule). The trainer and the preflight both
    decide here."""
    from engine.config import format_bytes
    from engine.data.tokenize import IGNORE_INDEX
    from engine.train.distributed import shards_model
    from engine.train.loss import uses_chunked_loss

    rows = config.train.batch_size * (2 if config.train.method == "dpo" else 1)  # DPO: chosen and rejected
    batch = longest_batch(samples, rows, pad_token_id, packed=packed,
                          tokens_per_batch=config.train.tokens_per_batch if packed else 0)
    targets = batch.get("shift_labels", batch["labels"])
    shape = memory_shape(model, dtype)
    sharded = shards_model(config.distributed.strategy, processes)
    # FSDP: the output head's weights are shards outside the model's forward, so the model computes its own loss.
    chunked = uses_chunked_loss(backend) and not sharded
    available = available_memory(device)

    def estimate(checkpointing: bool) -> tuple[MemoryEstimate, int]:
        step = estimate_step_memory(shape, positions=batch["input_ids"].numel(), length=batch["input_ids"].shape[1],
                                    trained_positions=int((targets != IGNORE_INDEX).sum()),
                                    checkpointing=checkpointing, chunked_loss=chunked, device=device)
        return step, need_per_device(step, processes=processes if sharded else 1, layers=shape.layers)

    setting = config.train.gradient_checkpointing
    if setting != "auto":
        on, why = bool(setting), f"train.gradient_checkpointing = {str(setting).lower()}"
    elif backend == "unsloth":
        on, why = True, "auto: unsloth's own checkpointing (offloaded to the host, cheap)"
    else:
        _, without = estimate(False)
        on = verdict_for(without, available) != FITS
        why = (f"auto: {'on' if on else 'off'} — a step needs ~{format_bytes(without)} without it, of "
               f"{format_bytes(available)} available on {device}")
    step, need = estimate(on)
    return StepPlan(batch=batch, rows=rows, shape=shape, estimate=step, need=need, available=available,
                    checkpointing=on, checkpointing_reason=why, chunked_loss=chunked)


def need_per_device(estimate: MemoryEstimate, *, processes: int, layers: int) -> int:
    """What one device holds: the whole step, or with the model sharded over `processes` (FSDP) 1/N of the
    weights and LoRA state, the two layers gathered at a time (the one computing and the next, fetched ahead)
    and the whole of its own activations."""
    if processes <= 1:
        return estimate.total
    return int(estimate.weights / processes + 2 * estimate.weights / max(1, layers)
               + estimate.lora_state / processes + estimate.activations)


def _element_bytes(tensor, default: int) -> int:
    return tensor.element_size() if tensor is not None and tensor.is_floating_point() else default


def memory_shape(model, compute_dtype) -> MemoryShape:
    """The `MemoryShape` of a loaded model under LoRA (peft) computing in `compute_dtype`, read from its config,
    weights and the adapter layers of its first decoder layer."""
    from engine.train.distributed import held_weight_bytes

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    text = getattr(config, "get_text_config", lambda: config)()
    hidden = int(getattr(text, "hidden_size", 1024))
    heads = int(getattr(text, "num_attention_heads", 16))
    wrapped = [(name, module) for name, module in base.named_modules() if hasattr(module, "lora_A")]
    first_layer = [module for name, module in wrapped if _layer_index(name) == 0] or [m for _, m in wrapped]
    lora_a = [param for module in first_layer for param in module.lora_A.parameters()]
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    compute = compute_dtype.itemsize
    return MemoryShape(
        layers=int(getattr(text, "num_hidden_layers", 1)), hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", None) or 4 * hidden), heads=heads,
        head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        vocab=int(getattr(text, "vocab_size", 32000)), weights_bytes=held_weight_bytes(model),
        lora_params=sum(param.numel() for param in model.parameters() if param.requires_grad),
        lora_element_bytes=lora_a[0].element_size() if lora_a else 4,
        lora_inputs=tuple(int(module.in_features) for module in first_layer),
        lora_rank=int(lora_a[0].shape[0]) if lora_a else 0,
        lora_dropout=any(_dropout_rate(module) > 0 for module in first_layer), compute_bytes=compute,
        residual_bytes=_element_bytes(getattr(embeddings, "weight", None), compute),
        head_bytes=_element_bytes(getattr(head, "weight", None), compute),
        eager_attention=getattr(config, "_attn_implementation", "sdpa") == "eager")


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for before, part in zip(parts, parts[1:]):
        if before in ("layers", "h", "blocks") and part.isdigit():
            return int(part)
    return None


def _dropout_rate(module) -> float:
    dropouts = getattr(module, "lora_dropout", {})
    return max((float(getattr(layer, "p", 0.0)) for layer in dropouts.values()), default=0.0)


def available_memory(device: str) -> int:
    """Bytes a step can use on `device`: free GPU memory plus what this process already holds there, or free
    RAM plus this process's resident memory on a CPU."""
    import psutil

    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_allocated())
    return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)
