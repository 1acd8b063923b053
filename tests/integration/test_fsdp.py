"""FSDP: several processes each holding a shard of the model, through accelerate's FSDP2 path and the same Trainer a
GPU run takes. Accelerate shards only across GPUs, so the ranks here run with `tests/fsdp_on_cpu` on their
PYTHONPATH, which lets it shard over CPU processes (gloo); everything else is the product's own code."""

import json
import os
from pathlib import Path

import pytest

from engine.run.events import read_events
from engine.train.checkpoint import verify_checkpoint
from tests.integration.test_distributed import finished, losses, pids_of
from tests.conftest import LORADECK, REPO, SAMPLE_DATA
from tests.integration.test_train_cli import DEMO, tiny_sets, wait_for

SHIM = Path(__file__).resolve().parents[1] / "fsdp_on_cpu"
COMMON = ["lora.dropout=0", "data.eval_path=", "data.eval_split=0.1", "train.eval_every=3", "train.save_every=3",
          "train.max_steps=6"]


def loradeck_fsdp(*args, timeout=300):
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(SHIM)}
    return subprocess.run(LORADECK + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def largest_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[key] - b[key]).abs().max().item() for key in a)


def events(run_dir: Path) -> list[dict]:
    return list(read_events(run_dir / "events.jsonl"))


def test_fsdp_trains_as_ddp_does_with_every_rank_holding_half_the_weights(tiny_model_dir, tmp_path):
    probes = 'probe.prompts=["Name a colour."]'
    # DDP over 2 processes trains as one process with the whole batch (test_distributed); FSDP must train as DDP,
    # across the end of an epoch too: 10 rows, 1 held out, so every third global batch of 4 has one row and a
    # rank with none.
    ten_rows = tmp_path / "ten.jsonl"
    ten_rows.write_text("".join((SAMPLE_DATA / "demo_train.jsonl").read_text().splitlines(keepends=True)[:10]))
    for name, strategy in (("fsdp", "fsdp"), ("ddp", "ddp")):
        result = loradeck_fsdp("train", DEMO, "--run-dir", str(tmp_path / name), "--foreground", *tiny_sets(
            tiny_model_dir, *COMMON, probes, "train.batch_size=2", "distributed.processes=2",
            f"distributed.strategy={strategy}", f"data.path={ten_rows}", "train.max_steps=7"))
        assert result.returncode == 0, result.stderr
    fsdp, ddp = (losses(tmp_path / name) for name in ("fsdp", "ddp"))
    assert sorted(fsdp) == list(range(1, 8))
    assert max(abs(fsdp[step] - ddp[step]) for step in ddp) < 1e-5, (fsdp, ddp)
    # The adapter is gathered whole from the shards: the weights DDP trained.
    assert largest_difference(adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp")) < 1e-6
    log = events(tmp_path / "fsdp")
    assert next(e for e in log if e["type"] == "model_loaded")["strategy"] == "fsdp"
    assert all(e.get("world_size") == 2 for e in log)
    assert [e["type"] for e in log].count("started") == 1
    samples = [e for e in log if e["type"] == "sample"]
    assert [s["step"] for s in samples] == [0, 3, 6, 7]
    assert all(len(s["samples"]) == 1 for s in samples), "every rank generated in step, rank 0 wrote"
    assert verify_checkpoint(tmp_path / "fsdp" / "handoff")["global_step"] == 7
    # Sharded for real: each rank holds half the weights a DDP rank holds.
    held = {name: [r["weights"] for e in events(tmp_path / name) if e["type"] == "telemetry" for r in e["ranks"]]
            for name in ("fsdp", "ddp")}
    assert held["fsdp"] and held["ddp"]
    assert all(abs(w / held["ddp"][0] - 0.5) < 0.01 for w in held["fsdp"]), held

    from engine.run.history import RunHistory
    from tui.screens.monitor import device_text, progress_line

    telemetry = [e for name in ("fsdp", "ddp") for e in events(tmp_path / name) if e["type"] == "telemetry"]
    assert all([r["rank"] for r in e["ranks"]] == [0, 1] and all(r["rss"] > 0 for r in e["ranks"])
               for e in telemetry), "rank 0 gathers every rank's own figures"
    history = RunHistory(tmp_path / "fsdp")
    history.poll()
    assert "2 processes (FSDP)" in progress_line(history)
    assert "rank 0: RSS" in device_text(history) and "rank 1: RSS" in device_text(history)
    assert " wts " in device_text(history)
    history = RunHistory(tmp_path / "ddp")
    history.poll()
    assert "2 processes" in progress_line(history) and "FSDP" not in progress_line(history)
    assert "rank 1: RSS" in device_text(history) and " wts " not in device_text(history), "DDP: nothing sharded"

    resumed = loradeck_fsdp("resume", str(tmp_path / "fsdp" / "handoff"), "--run-dir", str(tmp_path / "more"),
                            "--foreground", "--processes", "1", "--set", "train.max_steps=9")
    assert resumed.returncode == 0, resumed.stderr
    assert "distributed.strategy fsdp -> ddp" in resumed.stderr
    assert sorted(losses(tmp_path / "more")) == [8, 9]


def test_fsdp_qlora_with_checkpointing_trains_as_ddp_does(tiny_model_dir, tmp_path):
    for name, strategy, checkpointing in (("fsdp", "fsdp", "true"), ("ddp", "ddp", "false")):
        result = loradeck_fsdp("train", DEMO, "--run-dir", str(tmp_path / name), "--foreground", *tiny_sets(
            tiny_model_dir, *COMMON, "model.load_in_4bit=true", "distributed.processes=2",
            f"distributed.strategy={strategy}", f"train.gradient_checkpointing={checkpointing}"))
        assert result.returncode == 0, result.stderr
    fsdp, ddp = losses(tmp_path / "fsdp"), losses(tmp_path / "ddp")
    assert max(abs(fsdp[step] - ddp[step]) for step in ddp) < 1e-5, (fsdp, ddp)
    assert largest_difference(adapter(tmp_path / "fsdp"), adapter(tmp_path / "ddp")) < 1e-6
    config = json.loads((tmp_path / "fsdp" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert all(".layers." in key and "_wrapped_module" not in key for key in adapter(tmp_path / "fsdp"))


def test_fsdp_dpo_equals_one_process(tiny_model_dir, tmp_path):
    # A fresh LoRA: TRL still keeps the reference as a second adapter, now sharded too.
    dpo = ["lora.dropout=0", "data.eval_split=0", "data.eval_path=", "train.max_steps=4", "train.method=dpo",
           f"data.path={SAMPLE_DATA / 'demo_preferences.jsonl'}"]
    for name, processes, batch, strategy in (("fsdp", 2, 2, "fsdp"), ("one", 1, 4, "ddp")):
        result = loradeck_fsdp("train", DEMO, "--run-dir", str(tmp_path / name), "--foreground", *tiny_sets(
            tiny_model_dir, *dpo, f"train.batch_size={batch}", f"distributed.processes={processes}",
            f"distributed.strategy={strategy}"))
        assert result.returncode == 0, result.stderr
    fsdp, one = losses(tmp_path / "fsdp"), losses(tmp_path / "one")
    assert fsdp[1] == pytest.approx(0.693147, abs=1e-5)  # ln 2: the policy starts as its reference
    assert max(abs(fsdp[step] - one[step]) for step in one) < 1e-5, (fsdp, one)
    assert largest_difference(adapter(tmp_path / "fsdp"), adapter(tmp_path / "one")) < 1e-6


def test_fsdp_saves_on_command_and_stops_for_the_session_clock_with_every_rank(tiny_model_dir, tmp_path):
    from engine.run.control import send_command

    run_dir = tmp_path / "run"
    started = loradeck_fsdp("train", DEMO, "--run-dir", str(run_dir), "--session", "30s", *tiny_sets(
        tiny_model_dir, "train.max_steps=100000", "train.log_every=20", "session.buffer=3s",
        "distributed.processes=2", "distributed.strategy=fsdp"))
    assert started.returncode == 0, started.stderr
    wait_for(lambda: len(losses(run_dir)) >= 2, timeout=120)
    send_command(run_dir, "save")
    wait_for(lambda: any(e["type"] == "checkpoint" and e["reason"] == "requested" for e in events(run_dir)),
             timeout=60)
    end = wait_for(lambda: finished(run_dir), timeout=120)
    assert end["type"] == "finished" and end["reason"] == "deadline", end
    deadline = [e for e in events(run_dir) if e["type"] == "deadline"][-1]
    assert end["ts"] <= deadline["deadline_at"]
    saves = [e for e in events(run_dir) if e["type"] == "checkpoint"]
    assert {"first", "requested"} <= {s["reason"] for s in saves} and len([s for s in saves if s["final"]]) == 1
    assert verify_checkpoint(run_dir / "handoff")["global_step"] == end["step"]
    wait_for(lambda: not pids_of(run_dir), timeout=60)


def test_fsdp_is_refused_in_one_line_where_it_cannot_run(tiny_model_dir, tmp_path):
    from tests.integration.test_train_cli import loradeck

    no_gpu = loradeck("train", DEMO, "--run-dir", str(tmp_path / "run"), *tiny_sets(
        tiny_model_dir, "distributed.processes=2", "distributed.strategy=fsdp"))
    assert no_gpu.returncode == 2
    assert no_gpu.stderr.strip().splitlines() == [
        'loradeck: error: distributed.strategy = "fsdp" shards the model across CUDA GPUs and none is visible — '
        "use distributed.strategy=ddp here"]
    assert not (tmp_path / "run").exists(), "refused before a run directory was made"
    alone = loradeck("train", DEMO, *tiny_sets(tiny_model_dir, "distributed.strategy=fsdp"))
    assert alone.returncode == 2 and "set distributed.processes to 2 or more" in alone.stderr
    assert "Traceback" not in alone.stderr + no_gpu.stderr
