"""Model FLOPs utilisation: a known card's dense peak, the LoRA FLOPs per token, and '—' where unknown."""

import pytest

from engine.run.telemetry import dense_peak_flops, lora_flops_per_token, model_flops_utilisation


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("Tesla T4", 65e12),
    ("NVIDIA A10G", None), ("NVIDIA GeForce RTX 4090", None), ("", None), (None, None),
])
def test_the_dense_peak_comes_from_the_table_or_is_unknown(name, peak):
    assert dense_peak_flops(name) == peak


def test_lora_flops_count_the_weights_four_times_plus_causal_attention():
    # a 1.7B-shaped model (24 layers, hidden 2048) on 751-token rows
    per_token = lora_flops_per_token(1_711_376_384, 24, 2048, 751)
    assert per_token == 4 * 1_711_376_384 + 6 * 24 * 2048 * 751
    assert model_flops_utilisation(22_618, per_token, 989e12) == pytest.approx(22_618 * per_token / 989e12)
    assert 0.15 < model_flops_utilisation(22_618, per_token, 989e12) < 0.17  # the packed figure, 15.6%


def test_utilisation_is_unknown_rather_than_guessed():
    assert model_flops_utilisation(1000.0, 1e9, None) is None
    assert model_flops_utilisation(None, 1e9, 989e12) is None
