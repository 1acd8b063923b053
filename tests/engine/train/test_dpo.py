"""Preference training (train.method = dpo) on a small model: the blind screen's file trains as it is, the margin
grows, the reference (the starting adapter) stays fixed and exists once beside one copy of the base, and a DPO run
resumes from its bundle — reference adapter included — at the next step."""

import json
import math
import shutil

import pytest

from engine.chat.rating import RatingLog
from engine.errors import ConfigError, DataError
from engine.run.events import read_events
from engine.train.run import TrainingRun, run_training
from tests.conftest import SAMPLE_DATA, tiny_config
from tests.engine.train.test_session import _stop_at


def rated_preferences(folder):
    """What a user's blind verdicts leave in RUN/chat/: they preferred the bare answer to the SFT format."""
    log = RatingLog(folder)
    rows = [json.loads(line) for line in (SAMPLE_DATA / "demo_train.jsonl").read_text().splitlines()[:12]]
    for number, row in enumerate(rows):
        short = row["output"].splitlines()[0].removeprefix("ANSWER: ") + "."
        left, right = ("demo", row["output"]), ("base", short)
        if number % 2:
            left, right = right, left
        log.record([{"role": "user", "content": row["instruction"]}], left, right,
                   "right" if right[0] == "base" else "left")
    return log.preferences_path


def dpo_config(model_dir, data, *overrides):
    return tiny_config(model_dir, "train.method=dpo", f"data.path={data}", "data.eval_path=", "data.eval_split=0",
                       "train.learning_rate=5e-3", "lora.dropout=0", *overrides)


def lora_weights(model, adapter):
    return {name: p.detach().clone() for name, p in model.named_parameters() if f".{adapter}." in name}


class Watched(TrainingRun):
    """Records the model's adapters when training begins and when the final adapter is saved."""

    seen: dict = {}

    def on_train_begin(self, state, control):
        super().on_train_begin(state, control)
        base = {n: p for n, p in self.model.named_parameters() if "lora_" not in n}
        Watched.seen.update(
            adapters=sorted(self.model.peft_config), ref_model=self.trainer.ref_model,
            base_bytes=sum(p.numel() * p.element_size() for p in base.values()),
            base_storages=len({p.data_ptr() for p in base.values()}), base_tensors=len(base),
            ref_start=lora_weights(self.model, "ref"), default_start=lora_weights(self.model, "default"))

    def save(self, reason, *, final=False):
        if final:
            Watched.seen.update(ref_end=lora_weights(self.model, "ref"), default_end=lora_weights(self.model, "default"))
        return super().save(reason, final=final)


def test_dpo_from_an_sft_adapter_on_blind_ratings_moves_the_margin_and_keeps_the_reference(small_model_dir, small_run,
                                                                                        tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data.preferences import load_preference_data
    from engine.train.dpo import preference_margins

    preferences = rated_preferences(tmp_path / "chat")
    config = dpo_config(small_model_dir, preferences, "train.max_steps=6", f"model.adapter={small_run}")
    assert run_training(tmp_path / "dpo", config, run_class=Watched) == 0
    seen = Watched.seen
    assert seen["adapters"] == ["default", "ref"] and seen["ref_model"] is None, "no second model: a frozen adapter"
    base = AutoModelForCausalLM.from_pretrained(small_model_dir)
    assert seen["base_bytes"] == sum(p.numel() * p.element_size() for p in base.parameters()), "base weights once"
    assert seen["base_storages"] == seen["base_tensors"], "no base tensor is held twice"

    sft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_model_dir), small_run / "adapter")
    started = lora_weights(sft, "default")
    for name, value in seen["default_start"].items():
        assert (value == started[name]).all(), "training starts from the SFT adapter"
        assert (seen["ref_start"][name.replace(".default.", ".ref.")] == value).all()
    for name, value in seen["ref_start"].items():
        assert (seen["ref_end"][name] == value).all(), "the reference never moves"
    assert any(not (seen["default_end"][n] == v).all() for n, v in seen["default_start"].items()), "the policy did"

    events = list(read_events(tmp_path / "dpo" / "events.jsonl"))
    steps = [e for e in events if e["type"] == "step"]
    assert math.isclose(steps[0]["loss"], math.log(2), rel_tol=1e-4), "policy = reference at step 1"
    assert {"reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy"} <= set(steps[-1])
    assert steps[-1]["reward_margin"] > 0
    loaded = next(e for e in events if e["type"] == "model_loaded")
    assert loaded["method"] == "dpo" and loaded["data_format"] == "preference" and loaded["train_rows"] == 12

    pairs = load_preference_data(preferences, eval_split=0).train
    tokenizer = AutoTokenizer.from_pretrained(small_model_dir)
    before = preference_margins(sft, tokenizer, pairs)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_model_dir),
                                        tmp_path / "dpo" / "adapter")
    after = preference_margins(trained, tokenizer, pairs)
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0, (before, after)
    assert not (tmp_path / "dpo" / "adapter" / "ref").exists(), "only the trained adapter is saved"


def test_a_dpo_run_stops_and_resumes_from_its_bundle_elsewhere_at_the_next_step(small_model_dir, small_run, tmp_path):
    from engine.train.handoff import open_bundle

    config = dpo_config(small_model_dir, rated_preferences(tmp_path / "chat"), "train.max_steps=5",
                        f"model.adapter={small_run}")
    assert run_training(tmp_path / "part1", config, run_class=_stop_at(2)) == 0
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(tmp_path / "part1" / "handoff", moved)
    bundle = open_bundle(moved)
    assert bundle.config.model.adapter == str((moved / "reference").resolve()), "the reference travels inside"
    assert run_training(tmp_path / "part2", bundle.config, resume_from=bundle.path) == 0
    events = list(read_events(tmp_path / "part2" / "events.jsonl"))
    assert next(e for e in events if e["type"] == "resumed")["step"] == 2
    assert [e["step"] for e in events if e["type"] == "step"][0] == 3
    assert next(e for e in events if e["type"] == "finished")["step"] == 5


def test_a_crafted_bundle_cannot_point_the_reference_elsewhere(small_model_dir, small_run, tmp_path):
    from engine.errors import RunError
    from engine.train.handoff import open_bundle

    config = dpo_config(small_model_dir, rated_preferences(tmp_path / "chat"), "train.max_steps=1",
                        f"model.adapter={small_run}")
    assert run_training(tmp_path / "run", config) == 0
    bundle = tmp_path / "run" / "handoff"
    text = (bundle / "config.toml").read_text().replace('adapter = "reference"', f'adapter = "{small_run}"')
    (bundle / "config.toml").write_text(text)
    with pytest.raises(RunError):
        open_bundle(bundle)  # the edited config.toml no longer matches its pinned digest
    from engine.train.checkpoint import file_manifest, read_state, write_state

    write_state(bundle, read_state(bundle), file_manifest(bundle))  # a forger re-pins every file
    with pytest.raises(RunError) as error:
        open_bundle(bundle)
    assert "not the reference adapter the bundle carries" in str(error.value)


def test_dpo_refuses_sft_data_and_sft_only_settings_in_one_line(small_model_dir, tmp_path):
    from engine.config import load_config
    from engine.data.preferences import load_preference_data

    with pytest.raises(DataError) as error:
        load_preference_data(SAMPLE_DATA / "demo_train.jsonl")
    assert "needs preference pairs" in str(error.value) and "alpaca" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.method=dpo", "train.packing=on"])
    assert "DPO batches are padded pairs" in str(error.value) and "\n" not in str(error.value)


def test_preflight_counts_both_halves_of_each_pair(small_model_dir, small_run, tmp_path):
    from engine.train.preflight import run_preflight

    config = dpo_config(small_model_dir, rated_preferences(tmp_path / "chat"), f"model.adapter={small_run}")
    report = run_preflight(config, measure=True)
    assert "for 4 x " in report.reasons[1] and "DPO: chosen and rejected" in report.reasons[1], report.reasons
    assert report.measured_peak_bytes and report.verdict == "fits"
