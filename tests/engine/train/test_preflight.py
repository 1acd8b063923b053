from engine.train.preflight import FITS, WONT_FIT, run_preflight
from tests.conftest import tiny_config


def test_preflight_measures_the_longest_batch_and_fits_the_tiny_model(tiny_model_dir):
    report = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4"))
    assert report.verdict == FITS
    assert report.measured_peak_bytes and report.measured_peak_bytes > report.weights_bytes
    assert report.longest_tokens <= 128 and report.batch_size == 4
    assert report.suggestions == []


def test_auto_checkpointing_turns_on_only_when_a_step_would_not_fit_without_it(tiny_model_dir, monkeypatch):
    import engine.train.memory as memory

    roomy = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4"), measure=False)
    assert roomy.gradient_checkpointing is False and roomy.checkpointing_reason.startswith("auto: off — a step needs")
    monkeypatch.setattr(memory, "available_memory", lambda device: int(roomy.estimate_bytes * 1.1))
    tight = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4"), measure=False)
    assert tight.gradient_checkpointing is True and tight.checkpointing_reason.startswith("auto: on — a step needs")
    assert tight.activation_bytes < roomy.activation_bytes
    assert "gradient checkpointing on (auto: on" in " ".join(tight.reasons)
    forced = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4", "train.gradient_checkpointing=false"),
                           measure=False)
    assert forced.gradient_checkpointing is False and forced.verdict != FITS
    assert forced.checkpointing_reason == "train.gradient_checkpointing = false"


def test_a_run_too_big_for_memory_gets_wont_fit_and_the_knobs(tiny_model_dir, monkeypatch):
    import engine.train.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 50_000_000)  # a 50 MB machine
    report = run_preflight(tiny_config(tiny_model_dir, "train.batch_size=4", "train.gradient_checkpointing=false"),
                           measure=False)
    assert report.verdict == WONT_FIT
    joined = " ".join(report.suggestions)
    assert "train.batch_size=2" in joined and "gradient_checkpointing" in joined and "load_in_4bit" in joined


def test_the_speed_probe_times_real_steps_and_says_what_fits_in_the_session(tiny_model_dir, capsys):
    import json

    import pytest

    from engine.train.preflight import measure_speed
    from tests.conftest import SAMPLE_DATA, tiny_config
    from tui.cli.main import main

    speed = measure_speed(tiny_config(tiny_model_dir, "session.budget=2h"), steps=3)
    assert speed.steps == 3 and speed.tokens_per_s > 0 and speed.mfu is None and speed.device == "cpu"
    assert speed.train_tokens > 0 and speed.epoch_seconds == pytest.approx(speed.train_tokens / speed.tokens_per_s)
    assert speed.epochs_in_budget == pytest.approx(7200 / speed.epoch_seconds), "the config's budget by default"
    assert speed.peak_allocated_bytes > 0
    sets = [arg for value in (f"model.name={tiny_model_dir}", "model.dtype=float32", "data.max_length=128",
                              "train.batch_size=2") for arg in ("--set", value)]
    demo = str(SAMPLE_DATA / "configs" / "demo.toml")
    assert main(["preflight", demo, *sets, "--speed", "--steps", "2", "--session", "30m", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "fits" and report["speed"]["budget_seconds"] == 1800
    assert main(["preflight", demo, *sets, "--speed", "--steps", "0"]) == 2
    assert "--steps 0: give 1–1000 steps" in capsys.readouterr().err


def test_preflight_with_several_processes_sizes_one_gpu_and_says_so(small_model_dir):
    from engine.train.preflight import run_preflight
    from tests.conftest import tiny_config

    report = run_preflight(tiny_config(small_model_dir, "distributed.processes=2"), measure=False)
    assert any(r.startswith("per GPU, with 2 processes") and "global batch 4 rows" in r for r in report.reasons)


def test_preflight_with_fsdp_estimates_one_gpus_shard_instead_of_probing_the_whole_model(small_model_dir):
    from engine.train.preflight import run_preflight
    from tests.conftest import tiny_config

    whole = run_preflight(tiny_config(small_model_dir, "distributed.processes=2"), measure=False)
    sharded = run_preflight(tiny_config(small_model_dir, "distributed.processes=2", "distributed.strategy=fsdp"))
    assert sharded.measured_peak_bytes is None, "no whole-model probe: it is not what an FSDP rank meets"
    assert any(r.startswith("per GPU, with 2 processes and FSDP: 1/2 of the weights") for r in sharded.reasons)
    assert sharded.weights_bytes == whole.weights_bytes
    gathered = 2 * sharded.weights_bytes / 2  # two layers at a time, of the tiny config's two
    expected = sharded.weights_bytes / 2 + gathered + sharded.lora_bytes / 2 + sharded.activation_bytes
    assert sharded.per_gpu_bytes == int(expected) and whole.per_gpu_bytes is None
    assert "(estimated per GPU)" in sharded.reasons[0]
