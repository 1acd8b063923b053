from engine.train.preflight import FITS, WONT_FIT, estimate_memory, run_preflight
from tests.conftest import tiny_config


def test_preflight_measures_the_longest_batch_and_fits_the_tiny_model(tiny_model_dir):
    report = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4"))
    assert report.verdict == FITS
    assert report.measured_peak_bytes and report.measured_peak_bytes > report.weights_bytes
    assert report.longest_tokens <= 128 and report.batch_size == 4
    assert report.suggestions == []


def test_estimate_grows_with_batch_and_length_and_shrinks_with_4bit_and_checkpointing():
    import torch
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)
    base = estimate_memory(config, 4_884_480, 139_000_000, torch.float32, False, 4, 256, False)
    assert estimate_memory(config, 4_884_480, 139_000_000, torch.float32, False, 8, 256, False)[2] > base[2]
    assert estimate_memory(config, 4_884_480, 139_000_000, torch.float32, True, 4, 256, False)[0] < base[0] / 2
    assert estimate_memory(config, 4_884_480, 139_000_000, torch.float32, False, 4, 256, True)[2] < base[2] / 2


def test_a_run_too_big_for_memory_gets_wont_fit_and_the_knobs(tiny_model_dir, monkeypatch):
    import engine.train.preflight as preflight

    monkeypatch.setattr(preflight, "_available", lambda device: 50_000_000)  # a 50 MB machine
    report = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4"), measure=False)
    assert report.verdict == WONT_FIT
    joined = " ".join(report.suggestions)
    assert "train.batch_size=2" in joined and "gradient_checkpointing" in joined and "load_in_4bit" in joined
