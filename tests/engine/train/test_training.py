"""Training on the tiny model: events, adapters that change outputs, QLoRA, atomic checkpoints."""

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from engine.run.paths import complete_checkpoints
from engine.train.checkpoint import read_state, write_checkpoint
from engine.run.events import read_events
from engine.train.batches import EpochShuffleSampler
from engine.train.run import run_training
from tests.conftest import real_dataset, tiny_config


def event_types(run_dir):
    return [e["type"] for e in read_events(Path(run_dir) / "events.jsonl")]


def test_run_writes_events_checkpoints_and_a_plain_peft_adapter(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    config = tiny_config(tiny_model_dir, "train.max_steps=4", "train.save_every=2", "train.eval_every=2")
    assert run_training(run_dir, config) == 0
    events = read_events(run_dir / "events.jsonl")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert all(e["v"] == 1 and "ts" in e for e in events)
    steps = [e for e in events if e["type"] == "step"]
    assert all(isinstance(e["loss"], float) and e["tokens_per_s"] > 0 for e in steps)
    assert all(0.0 <= e["padding"] < 1.0 for e in steps)  # the share of padding in the step's batches
    assert [e["step"] for e in events if e["type"] == "eval"] == [2, 4]
    loaded = next(e for e in events if e["type"] == "model_loaded")
    assert loaded["gradient_checkpointing"] is False and loaded["checkpointing_reason"].startswith("auto: off")
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["step-000002", "step-000004"]
    assert read_state(run_dir / "checkpoints" / "step-000002")["global_step"] == 2
    assert not (run_dir / "trainer.pid").exists()
    assert not (run_dir / "trainer").exists(), "no empty folder left behind by the Trainer"

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    inputs = torch.tensor([[1, 520, 9531, 198, 2683]])
    with torch.no_grad():
        before = base(inputs).logits
    adapted = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    with torch.no_grad():
        after = adapted(inputs).logits
    assert not torch.allclose(before, after, atol=1e-4), "the trained adapter must change the logits"
    for key, value in adapted.get_base_model().state_dict().items():
        clean_key = key.replace(".base_layer", "")
        if "lora_" not in key and clean_key in reference:
            assert torch.equal(value, reference[clean_key]), f"base weight {key} changed"


def test_loss_decreases_on_the_demo_data(tiny_model_dir, tmp_path):
    run_training(tmp_path / "run", tiny_config(tiny_model_dir, "train.max_steps=30", "train.batch_size=4",
                                               "train.lr_scheduler=constant"))
    losses = [e["loss"] for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "step"]
    # a random 2-layer base learns slowly under LoRA; step-to-step noise is ~0.1
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.25


def test_qlora_4bit_trains_on_cpu_with_auto_checkpointing_and_its_adapter_loads_in_plain_peft(
        tiny_model_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, PreTrainedModel

    import engine.train.memory as memory

    # A machine whose memory the step would not fit without checkpointing: "auto" turns it on, and the trainer
    # really checkpoints (the library's switch is called, and the 4-bit model's LoRA weights still learn).
    monkeypatch.setattr(memory, "available_memory", lambda device: 30_000_000)
    switched = []
    original = PreTrainedModel.gradient_checkpointing_enable
    monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable",
                        lambda self, *args, **kwargs: switched.append(1) or original(self, *args, **kwargs))
    run_dir = tmp_path / "qlora"
    config = tiny_config(tiny_model_dir, "model.load_in_4bit=true", "train.max_steps=24", "train.batch_size=4",
                         "train.lr_scheduler=constant")
    assert config.train.gradient_checkpointing == "auto"
    assert run_training(run_dir, config) == 0
    events = read_events(run_dir / "events.jsonl")
    loaded = next(e for e in events if e["type"] == "model_loaded")
    assert loaded["load_in_4bit"] is True and loaded["gradient_checkpointing"] is True and switched
    assert loaded["checkpointing_reason"].startswith("auto: on — a step needs ~")
    assert loaded["checkpointing_reason"].endswith("of 30.0 MB available on cpu")
    assert loaded["memory_available"] == 30_000_000 and loaded["step_memory_estimate"] > 30_000_000
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "adapter")
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_bad_data_becomes_an_error_event_and_exit_code(tiny_model_dir, tmp_path):
    missing = tmp_path / "nope.jsonl"
    code = run_training(tmp_path / "run", tiny_config(tiny_model_dir, f"data.path={missing}"))
    assert code == 2
    error = [e for e in read_events(tmp_path / "run" / "events.jsonl") if e["type"] == "error"][-1]
    assert "nope.jsonl: no such file" in error["message"]


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=3)
    first = sampler.order(0)
    assert sorted(first) == list(range(50))
    assert EpochShuffleSampler(50, seed=3).order(0) == first
    assert sampler.order(1) != first
    sampler.set_epoch(1)
    assert list(iter(sampler)) == sampler.order(1)


class SlowSaveModel:
    """Writes half an adapter, then hangs: stands in for a save interrupted by SIGKILL."""

    def save_pretrained(self, folder):
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"partial")
        time.sleep(60)


class QuickModel:
    def save_pretrained(self, folder):
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"complete")
        (Path(folder) / "adapter_config.json").write_text("{}")


def _save_slowly(target):
    write_checkpoint(Path(target), model=SlowSaveModel(), state={"global_step": 2}, config_toml="")


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    target = tmp_path / "handoff"
    write_checkpoint(target, model=QuickModel(), state={"global_step": 1}, config_toml="")
    process = multiprocessing.get_context("fork").Process(target=_save_slowly, args=(str(target),))
    process.start()
    deadline = time.time() + 10
    while not list(tmp_path.glob(".handoff.tmp-*/adapter_model.safetensors")) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert read_state(target)["global_step"] == 1
    assert (target / "adapter_model.safetensors").read_bytes() == b"complete"


def test_replacing_a_checkpoint_swaps_it_whole(tmp_path):
    target = tmp_path / "handoff"
    write_checkpoint(target, model=QuickModel(), state={"global_step": 1}, config_toml="")
    write_checkpoint(target, model=QuickModel(), state={"global_step": 2}, config_toml="")
    assert read_state(target)["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["handoff"]


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "identity.json", "glaive_toolcall_en_demo.json",
                                  "c4_demo.jsonl", "dpo_en_demo.json"])
def test_trains_on_every_real_world_file(name, tiny_model_dir, tmp_path):
    from tests.conftest import real_dataset

    path = real_dataset(name)
    run_dir = tmp_path / "run"
    config = tiny_config(tiny_model_dir, f"data.path={path}", "data.eval_path=", "data.eval_split=0.05",
                         "train.max_steps=2", "data.max_length=256")
    assert run_training(run_dir, config) == 0
    events = read_events(run_dir / "events.jsonl")
    assert [e["type"] for e in events].count("step") == 2
    if name == "dpo_en_demo.json":
        assert any(e["type"] == "warning" and "chosen" in e["message"] for e in events)


def test_probes_answer_with_the_adapter_of_each_checkpoint(chatty_model_dir, tmp_path):
    from engine.chat.generation import ChatModels, GenerationSettings

    run_dir = tmp_path / "run"
    prompts = ["What is the capital of Peru?", "What is the opposite of 'early'?"]
    config = tiny_config(chatty_model_dir, "train.max_steps=4", "train.save_every=2", "train.learning_rate=5e-2",
                         f"probe.prompts={json.dumps(prompts)}", "probe.max_new_tokens=10")
    assert run_training(run_dir, config) == 0
    samples = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "sample"]
    assert [e["step"] for e in samples] == [0, 2, 4]
    for event in samples:
        assert [s["prompt"] for s in event["samples"]] == prompts
    assert samples[0]["samples"] != samples[-1]["samples"], "training changed what the model says"
    models = ChatModels(str(chatty_model_dir), [run_dir / "checkpoints" / "step-000002"])
    for sample in samples[1]["samples"]:
        answer = models.generate(models.labels[1], [{"role": "user", "content": sample["prompt"]}],
                                 GenerationSettings(max_new_tokens=10))
        assert answer == sample["answer"], "the probe used the adapter as saved at that checkpoint"
    assert models.generate("base", [{"role": "user", "content": prompts[0]}],
                           GenerationSettings(max_new_tokens=10)) == samples[0]["samples"][0]["answer"]


def test_auto_dtype_trains_in_bf16_where_the_cpu_has_it_with_fp32_adapters_and_tracks_fp32(tiny_model_dir, tmp_path,
                                                                                           monkeypatch):
    import torch
    from safetensors.torch import load_file

    losses = {}
    for name, capabilities in (("float32", {"avx2": True}), ("bfloat16", {"avx2": True, "avx512_bf16": True})):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda capabilities=capabilities: capabilities)
        assert run_training(tmp_path / name, tiny_config(tiny_model_dir, "train.max_steps=5", "model.dtype=auto",
                                                          "train.learning_rate=5e-3")) == 0
        events = read_events(tmp_path / name / "events.jsonl")
        loaded = next(e for e in events if e["type"] == "model_loaded")
        assert loaded["dtype"] == name and loaded["dtype_reason"]
        losses[name] = [e["loss"] for e in events if e["type"] == "step"]
        adapter = load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")
        assert {tensor.dtype for tensor in adapter.values()} == {torch.float32}  # LoRA weights stay fp32
    assert len(losses["bfloat16"]) == len(losses["float32"]) == 5
    gaps = [abs(a - b) / b for a, b in zip(losses["bfloat16"], losses["float32"])]
    print(f"bf16 vs fp32 relative loss gap per step: {[round(g, 4) for g in gaps]}")
    assert max(gaps) < 0.05, gaps  # bf16 rounding, not a different run


def test_step_events_report_the_padding_that_length_grouping_removes(tiny_model_dir, tmp_path):
    shares = {}
    for grouped in ("true", "false"):
        config = tiny_config(tiny_model_dir, "train.max_steps=8", "train.batch_size=4", "train.learning_rate=1e-4",
                             f"train.group_by_length={grouped}", "data.eval_split=0", "data.eval_path=",
                             f"data.path={real_dataset('alpaca_en_demo.json')}", "data.max_length=192")
        assert run_training(tmp_path / grouped, config) == 0
        steps = [e for e in read_events(tmp_path / grouped / "events.jsonl") if e["type"] == "step"]
        shares[grouped] = sum(e["padding"] for e in steps) / len(steps)
    assert shares["true"] < shares["false"] / 2, shares


def test_a_run_in_this_process_gives_the_signal_handlers_back(tiny_model_dir, tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert run_training(tmp_path / "run", tiny_config(tiny_model_dir, "train.max_steps=1")) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
