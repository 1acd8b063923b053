"""The memory model (engine/train/memory.py) against what autograd really keeps here, and against the peaks
measured on an NVIDIA H200 (fixtures from the GPU issue, measured with the engine of the time: the model's own
loss over fp32 logits, and peft's fp32 upcast of embeddings, lm_head and norms under 4-bit)."""

import pytest
import torch

from engine.train.memory import (FITS, TIGHT, WONT_FIT, MemoryShape, activation_bytes_per_token,
                                 estimate_step_memory, memory_shape, verdict_for)


def _lora_model(dtype, dropout, attention="sdpa"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=500)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear"))


def _kept_per_token_in_one_layer(model, rows, length):
    """Bytes of the tensors autograd saves for backward inside decoder layer 1, per token (each storage once,
    parameters left out)."""
    model.train()
    layer = model.get_base_model().model.layers[1]
    inside, saved = [False], {}

    def pack(tensor):
        if inside[0]:
            saved.setdefault(tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        return tensor

    layer.register_forward_pre_hook(lambda module, args: inside.__setitem__(0, True))
    layer.register_forward_hook(lambda module, args, output: inside.__setitem__(0, False))
    ids = torch.randint(0, 500, (rows, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    parameters = {param.untyped_storage().data_ptr() for param in model.parameters()}
    return sum(size for pointer, size in saved.items() if pointer not in parameters) / (rows * length)


@pytest.mark.parametrize("dtype,dropout,attention", [
    (torch.bfloat16, 0.05, "sdpa"), (torch.float32, 0.05, "sdpa"), (torch.bfloat16, 0.0, "sdpa"),
    (torch.bfloat16, 0.05, "eager")])
def test_the_per_layer_activation_estimate_is_what_autograd_keeps(dtype, dropout, attention):
    model = _lora_model(dtype, dropout, attention)
    measured = _kept_per_token_in_one_layer(model, rows=2, length=96)
    estimated = activation_bytes_per_token(memory_shape(model, dtype), device="cpu", length=96)
    assert estimated == pytest.approx(measured, rel=0.15), (estimated, measured)


def test_without_dropout_in_fp32_the_estimate_errs_high_not_low():
    # LoRA layers reading the same input (q, k, v) keep one fp32 copy between them when nothing is cast or dropped;
    # the estimate counts one each: over, never under.
    model = _lora_model(torch.float32, 0.0)
    measured = _kept_per_token_in_one_layer(model, rows=2, length=96)
    estimated = activation_bytes_per_token(memory_shape(model, torch.float32), device="cpu", length=96)
    assert measured <= estimated <= 1.35 * measured, (estimated, measured)


def test_the_shape_is_read_from_the_loaded_model():
    model = _lora_model(torch.bfloat16, 0.05)
    shape = memory_shape(model, torch.bfloat16)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.head_dim) == (3, 256, 768, 8, 32)
    assert shape.lora_inputs == (256,) * 6 + (768,) and shape.lora_rank == 8 and shape.lora_dropout
    assert shape.lora_element_bytes == 4 and shape.compute_bytes == 2 and shape.residual_bytes == 2
    assert shape.lora_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.weights_bytes == sum(p.numel() * p.element_size() for p in model.parameters())


SMOLLM2_17B = dict(layers=24, hidden=2048, intermediate=8192, heads=32, head_dim=64, vocab=49152)
LLAMA31_8B = dict(layers=32, hidden=4096, intermediate=14336, heads=32, head_dim=128, vocab=128256)


def _lora_params(layers, hidden, intermediate, kv_width, rank=16):
    per_layer = rank * (2 * (hidden + hidden) + 2 * (hidden + kv_width) + 3 * (hidden + intermediate))
    return layers * per_layer


def test_the_estimate_lands_within_15_percent_of_the_h200_probe_of_a_17b_bf16_lora_run():
    # 1.7B-shape bf16 LoRA r16 on every linear, batch 16 x 751 tokens, no checkpointing, the model's own loss:
    # measured peak allocated 64.4 GB.
    lora = _lora_params(24, 2048, 8192, 2048)
    shape = MemoryShape(**SMOLLM2_17B, weights_bytes=1_711_376_384 * 2 + lora * 4, lora_params=lora,
                        lora_element_bytes=4, lora_inputs=(2048,) * 6 + (8192,), lora_rank=16, lora_dropout=True,
                        compute_bytes=2, residual_bytes=2, head_bytes=2)
    estimate = estimate_step_memory(shape, positions=16 * 751, length=751, checkpointing=False,
                                    chunked_loss=False, device="cuda")
    assert estimate.total == pytest.approx(64.4e9, rel=0.15)


def test_the_estimate_lands_within_15_percent_of_the_h200_probe_of_an_8b_qlora_run():
    # 8B-shape NF4 QLoRA r16 on every linear, batch 4 x 751, checkpointing, embeddings / lm_head / norms upcast to
    # fp32 (so the hidden states and logits were fp32): measured peak allocated 14.3 GB.
    layers, hidden, kv = 32, 4096, 1024
    linear = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * 14336)
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, one 8-bit scale per 64, one fp32 per 256 scales
    lora = _lora_params(layers, hidden, 14336, kv)
    weights = int(linear * nf4) + 2 * 128256 * hidden * 4 + (2 * layers + 1) * hidden * 4 + lora * 4
    shape = MemoryShape(**LLAMA31_8B, weights_bytes=weights, lora_params=lora, lora_element_bytes=4,
                        lora_inputs=(hidden,) * 6 + (14336,), lora_rank=16, lora_dropout=True, compute_bytes=2,
                        residual_bytes=4, head_bytes=4)
    estimate = estimate_step_memory(shape, positions=4 * 751, length=751, checkpointing=True,
                                    chunked_loss=False, device="cuda")
    assert estimate.total == pytest.approx(14.3e9, rel=0.15)


def test_checkpointing_and_the_chunked_loss_shrink_the_estimate():
    shape = MemoryShape(**SMOLLM2_17B, weights_bytes=3_500_000_000, lora_params=18_087_936, lora_element_bytes=4,
                        lora_inputs=(2048,) * 6 + (8192,), lora_rank=16, lora_dropout=True, compute_bytes=2,
                        residual_bytes=2, head_bytes=2)
    plain = estimate_step_memory(shape, positions=8192, length=1024, checkpointing=False, chunked_loss=False,
                                 device="cuda")
    chunked = estimate_step_memory(shape, positions=8192, length=1024, checkpointing=False, chunked_loss=True,
                                   device="cuda")
    both = estimate_step_memory(shape, positions=8192, length=1024, checkpointing=True, chunked_loss=True,
                                device="cuda")
    assert both.total < chunked.total < plain.total
    assert plain.activations - chunked.activations > 8192 * 49152 * 8 * 0.8, "the full fp32 logits are gone"
    assert both.activations < chunked.activations / 5


def test_the_verdict_rule():
    assert verdict_for(79, 100) == FITS and verdict_for(90, 100) == TIGHT and verdict_for(96, 100) == WONT_FIT
    assert verdict_for(1, 0) == WONT_FIT
