"""The session clock's arithmetic, handoff bundles, and resume equivalence on the tiny model."""

import json
import math
import random
import shutil
import time
from pathlib import Path

import pytest

from engine.train.checkpoint import verify_checkpoint
from engine.config import load_config
from engine.errors import RunError
from engine.run.events import read_events
from engine.train.handoff import open_bundle
from engine.train.session import (PRESET_BUDGETS, SAVE_FLOOR_S, SessionClock, container_start_time, process_start_time,
                            resolve_deadline, run_class_for)
from engine.train.run import TrainingRun, run_training
from tests.conftest import SAMPLE_DATA, tiny_config


class FakeTime:
    def __init__(self, start=1000.0):
        self.t = start

    def __call__(self):
        return self.t


def test_clock_stops_when_the_time_left_no_longer_covers_a_step_a_save_and_the_buffer():
    now = FakeTime()
    clock = SessionClock(deadline=now.t + 100, buffer_s=10, now=now)
    steps, saves = [2.0, 4.0, 3.0], [2.0]
    # needed = slowest step 4 * 1.25 + save 2 * 1.5 + buffer 10 = 18
    assert not clock.decide(steps, saves, []).stop
    now.t += 100 - 18.5
    assert not clock.decide(steps, saves, []).stop
    now.t += 1
    decision = clock.decide(steps, saves, [])
    assert decision.stop and decision.needed_s == pytest.approx(18)
    # work due now (a periodic save, an eval) brings the stop forward
    now.t -= 3  # 20.5 s left
    assert not clock.decide(steps, saves, [6.0]).stop
    assert clock.decide(steps, saves, [6.0], eval_due=True).stop
    assert clock.decide(steps, saves, [], save_due=True).stop


def test_clock_never_misses_the_deadline_across_simulated_sessions():
    """Steps and saves jitter (±30%, occasional 1.2x spikes); the run must always finish its final save in time."""
    rng = random.Random(7)
    misses, left_at_exit = 0, []
    for _ in range(300):
        mean_step, mean_save = rng.uniform(0.5, 30), rng.uniform(0.2, 20)
        budget = rng.uniform(120, 3600)
        now = FakeTime(rng.uniform(0, 20))  # model loading
        clock = SessionClock(deadline=budget, buffer_s=rng.choice([5, 30, 60]), now=now)
        steps, saves = [], []
        while True:
            duration = mean_step * rng.uniform(0.7, 1.3) * (1.2 if rng.random() < 0.05 else 1.0)
            now.t += duration
            steps = (steps + [duration])[-20:]  # the window SessionRun keeps
            if not saves:  # the early measuring save
                saves.append(mean_save * rng.uniform(0.7, 1.3))
                now.t += saves[-1]
            if clock.decide(steps, saves, []).stop:
                now.t += mean_save * rng.uniform(0.7, 1.3)  # the final save
                break
        misses += now.t > budget
        left_at_exit.append(budget - now.t)
    assert misses == 0
    assert sorted(left_at_exit)[len(left_at_exit) // 2] > 0


def test_warnings_fire_once_per_threshold_and_extend_moves_the_deadline():
    now = FakeTime()
    clock = SessionClock(deadline=now.t + 1000, buffer_s=10, warn_at_s=[600, 120, 30], now=now)
    assert clock.crossed_thresholds() == []
    now.t += 500
    assert clock.crossed_thresholds() == [600]
    assert clock.crossed_thresholds() == []
    now.t += 400
    assert clock.crossed_thresholds() == [120]
    clock.extend(1800)
    assert clock.time_left() == pytest.approx(1900)
    now.t += 1800
    assert clock.crossed_thresholds() == [600, 120]  # both re-armed by the extension


def test_container_start_comes_from_pid1_age_else_uptime(tmp_path):
    import os

    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "uptime").write_text("5000.00 9000.00\n")
    ticks = os.sysconf("SC_CLK_TCK")
    # PID 1 started 1000 s after boot: the container is 4000 s old
    fields = ["S"] + ["0"] * 18 + [str(1000 * ticks)] + ["0"] * 30
    (proc / "1" / "stat").write_text("1 (init) " + " ".join(fields))
    started, how = container_start_time(proc)
    assert how == "age of PID 1" and time.time() - started == pytest.approx(4000, abs=2)
    (proc / "1" / "stat").unlink()
    started, how = container_start_time(proc)
    assert how == "/proc/uptime" and time.time() - started == pytest.approx(5000, abs=2)


def test_deadline_sources_budget_preset_and_absolute_time():
    config = load_config(None, ["session.budget=2h", "session.preset=kaggle"])
    deadline, source = resolve_deadline(config.session)
    # counted from this process's start (a pytest run may be minutes old by now)
    assert deadline == pytest.approx(process_start_time() + 2 * 3600, abs=2) and "2h from trainer start" in source
    config = load_config(None, ["session.preset=kaggle", "session.start=auto"])
    deadline, source = resolve_deadline(config.session)
    assert PRESET_BUDGETS["kaggle"] == 12 * 3600 and "container start" in source
    config = load_config(None, ["session.deadline=2030-01-02T03:04+00:00"])
    assert resolve_deadline(config.session)[0] == pytest.approx(1893553440)
    assert run_class_for(load_config(None)) is TrainingRun
    assert run_class_for(config).__name__ == "SessionRun"


def _record_samples(monkeypatch):
    """Every training sample the model is fed, in order, as its token tuple (eval is off in these runs)."""
    import engine.models.backends

    seen: list[tuple[int, ...]] = []
    real = engine.models.backends.build_peft_model

    def recording(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)

        def hook(module, args, kwargs):
            if module.training:
                for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]):
                    seen.append(tuple(ids[mask.bool()].tolist()))
        # the decoder: the training loss runs it directly (engine/train/loss.py), not the whole PeftModel
        model.get_base_model().model.register_forward_pre_hook(hook, with_kwargs=True)
        return model, tokenizer
    monkeypatch.setattr(engine.models.backends, "build_peft_model", recording)
    return seen


class StopAtStep(TrainingRun):
    stop_at = 0

    def should_stop_after_step(self, state, control, *, save_due):
        return "stopped" if state.global_step == self.stop_at else None


def _stop_at(step):
    return type(f"StopAt{step}", (StopAtStep,), {"stop_at": step})


def _losses(run_dir):
    return {e["step"]: e["loss"] for e in read_events(Path(run_dir) / "events.jsonl") if e["type"] == "step"}


EQUIVALENCE = ["train.max_steps=10", "train.batch_size=2", "train.grad_accum=2", "data.eval_split=0", "data.eval_path=",
               "train.lr_scheduler=cosine", "train.warmup_steps=2", "lora.dropout=0.1"]


def _demo_subset(tmp_path):
    # 24 rows, 4 per step: 6 steps per epoch, so 10 steps cross an epoch boundary
    rows = (SAMPLE_DATA / "demo_train.jsonl").read_text().splitlines()[:24]
    path = tmp_path / "subset.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("with_optimizer", [True, False], ids=["with-optimizer", "adapter-only"])
def test_interrupted_and_resumed_twice_replays_the_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch,
                                                                     with_optimizer):
    data = _demo_subset(tmp_path)
    config = tiny_config(tiny_model_dir, *EQUIVALENCE, f"data.path={data}",
                         f"session.with_optimizer={str(with_optimizer).lower()}")
    seen = _record_samples(monkeypatch)
    assert run_training(tmp_path / "whole", config) == 0
    whole_samples, whole_losses = list(seen), _losses(tmp_path / "whole")
    assert len(whole_samples) == 40 and len(set(whole_samples[:24])) == 24  # epoch 1: every sample once

    seen.clear()
    assert run_training(tmp_path / "part1", config, run_class=_stop_at(4)) == 0
    bundle1 = tmp_path / "copied-1"
    shutil.copytree(tmp_path / "part1" / "handoff", bundle1)  # "another machine"
    state = verify_checkpoint(bundle1)
    assert state["global_step"] == 4 and state["samples_consumed"] == 16 and state["data_seed"] == 42
    assert ("optimizer.pt" in state["files"]) is with_optimizer
    resumed = open_bundle(bundle1)
    assert run_training(tmp_path / "part2", resumed.config, resume_from=bundle1, run_class=_stop_at(7)) == 0
    resumed = open_bundle(tmp_path / "part2" / "handoff")
    assert run_training(tmp_path / "part3", resumed.config, resume_from=resumed.path) == 0

    assert seen == whole_samples, "the resumed runs must see exactly the uninterrupted sample sequence"
    pieces = {**_losses(tmp_path / "part1"), **_losses(tmp_path / "part2"), **_losses(tmp_path / "part3")}
    assert sorted(pieces) == list(range(1, 11))
    events2 = read_events(tmp_path / "part2" / "events.jsonl")
    assert next(e for e in events2 if e["type"] == "resumed")["step"] == 4
    assert min(e["step"] for e in events2 if e["type"] == "step") == 5
    lrs_whole = {e["step"]: e["lr"] for e in read_events(tmp_path / "whole" / "events.jsonl") if e["type"] == "step"}
    lrs_resumed = {e["step"]: e["lr"] for e in events2 if e["type"] == "step"}
    assert all(lrs_resumed[s] == pytest.approx(lrs_whole[s], rel=1e-9) for s in lrs_resumed)
    gap = max(abs(pieces[s] - whole_losses[s]) for s in range(5, 11))
    if with_optimizer:
        assert gap < 1e-5, f"exact resume drifted by {gap}"
    else:
        # A fresh Adam restarts its moments: close, not equal (bench/resume_gap.py measures it).
        assert 0 < gap < 0.5 * max(whole_losses.values())
    assert json.loads((tmp_path / "part3" / "handoff" / "state.json").read_text())["resumed_from"]["step"] == 7


def test_bundle_is_verified_and_refuses_corruption_partial_copies_and_other_shapes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert run_training(run_dir, tiny_config(tiny_model_dir, "train.max_steps=2")) == 0
    bundle = run_dir / "handoff"
    text = (bundle / "RESUME.md").read_text()
    assert f"loradeck resume {bundle.resolve()}" in text and "Step 2 of 2" in text
    assert (bundle / "data").is_dir() and open_bundle(bundle).config.data.path.startswith(str(bundle.resolve()))

    def broken(name, damage):
        copy = tmp_path / name
        shutil.copytree(bundle, copy)
        damage(copy)
        before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        with pytest.raises(RunError) as error:
            open_bundle(copy)
        assert before == {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}, "refusal touched the bundle"
        return str(error.value)

    def flip(copy):
        weights = copy / "adapter_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))

    assert "checksum" in broken("flipped", flip)
    assert "truncated" in broken("truncated", lambda c: (c / "adapter_model.safetensors").write_bytes(
        (c / "adapter_model.safetensors").read_bytes()[:100]))
    assert "partial" in broken("no-state", lambda c: (c / "state.json").unlink())
    assert "scheduler.pt is missing" in broken("no-scheduler", lambda c: (c / "scheduler.pt").unlink())
    with pytest.raises(RunError, match=r"lora\.r=8 \(bundle: 16\)"):
        open_bundle(bundle, ["lora.r=8"])
    with pytest.raises(RunError, match="target_modules"):
        open_bundle(bundle, ['lora.target_modules=["q_proj"]'])


def test_resume_on_a_different_base_is_refused_naming_it(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    assert run_training(run_dir, tiny_config(tiny_model_dir, "train.max_steps=1")) == 0
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    model.model.embed_tokens.weight.data.mul_(1.5)  # same architecture, different weights
    model.save_pretrained(other)
    bundle = open_bundle(run_dir / "handoff", [f"model.name={other}"])
    code = run_training(tmp_path / "resumed", bundle.config, resume_from=bundle.path)
    error = [e for e in read_events(tmp_path / "resumed" / "events.jsonl") if e["type"] == "error"][-1]
    assert code == 2 and "differs in weights" in error["message"] and str(tiny_model_dir) in error["message"]


def test_sigterm_mid_eval_abandons_the_eval_and_saves_at_once(tiny_model_dir, tmp_path, monkeypatch):
    import os
    import signal

    import engine.models.backends

    real = engine.models.backends.build_peft_model
    evals_seen = []

    def signalling(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)

        def hook(module, inputs):
            if not module.training:
                evals_seen.append(1)
                if len(evals_seen) == 2:  # a real SIGTERM, delivered inside the eval loop
                    os.kill(os.getpid(), signal.SIGTERM)
        model.get_base_model().model.register_forward_pre_hook(hook)  # the decoder: the loss runs it directly
        return model, tokenizer
    monkeypatch.setattr(engine.models.backends, "build_peft_model", signalling)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        config = tiny_config(tiny_model_dir, "train.max_steps=50", "train.eval_every=3", "data.eval_path=",
                             "data.eval_split=0.3")
        assert run_training(tmp_path / "run", config) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    events = read_events(tmp_path / "run" / "events.jsonl")
    finished = [e for e in events if e["type"] == "finished"][-1]
    assert finished["reason"] == "stopped" and finished["step"] == 3
    assert not [e for e in events if e["type"] == "eval"], "the interrupted eval must not report a loss"
    assert len(evals_seen) == 2, "eval stopped at the batch after the signal"
    verify_checkpoint(tmp_path / "run" / "handoff")


def test_staging_folders_of_killed_writers_are_cleaned_but_live_ones_kept(tmp_path):
    import os

    from engine.train.checkpoint import remove_stale_staging

    dead = tmp_path / ".handoff.tmp-999999999"
    live = tmp_path / f".step-000004.tmp-{os.getpid()}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"half")
    dead_file = tmp_path / ".summary.json.tmp-999999999"  # a snapshot write cut short
    dead_file.write_text("{")
    assert remove_stale_staging(tmp_path) == 2
    assert not dead.exists() and not dead_file.exists() and live.exists()


def test_an_unmeasured_eval_is_guessed_from_the_step_time_not_taken_as_free():
    now = FakeTime()
    clock = SessionClock(deadline=now.t + 20, buffer_s=5, now=now)
    steps, saves = [3.0], [0.2]
    assert not clock.decide(steps, saves, []).stop  # step 3.75 + save 1 + buffer 5 < 20
    # six eval batches at half a step each: 11.25 s more, which no longer fits
    assert clock.decide(steps, saves, [], eval_due=True, eval_steps_guess=3.0).stop


def test_a_final_eval_is_priced_with_the_same_step_and_save_figures_as_the_stop_decision():
    now = FakeTime()
    clock = SessionClock(deadline=now.t + 100, buffer_s=10, now=now)
    steps, saves = [2.0, 4.0], [2.0]
    step, save = clock.step_and_save(steps, saves)
    assert (step, save) == (pytest.approx(5.0), pytest.approx(3.0))
    assert clock.needed(steps, saves, [], save_due=False, eval_due=False)[1:] == (step, save)
    # three eval batches at one step each + the final save + the buffer = 15 + 3 + 10 = 28 s
    now.t += 100 - 28.5
    assert clock.final_eval_fits(steps, saves, 3)
    now.t += 1
    assert not clock.final_eval_fits(steps, saves, 3)


def test_a_bundle_saved_before_length_grouping_resumes_in_its_own_shuffled_order(tiny_model_dir, tmp_path):
    from engine.train.handoff import open_bundle

    assert run_training(tmp_path / "run", tiny_config(tiny_model_dir, "train.max_steps=2")) == 0
    bundle = tmp_path / "run" / "handoff"
    assert open_bundle(bundle).config.train.group_by_length is True
    state = json.loads((bundle / "state.json").read_text())
    del state["group_by_length"], state["state_sha256"]  # what an older loradeck wrote
    state["format"] = "loradeck-checkpoint/1"
    (bundle / "state.json").write_text(json.dumps(state))
    older = open_bundle(bundle)
    assert older.config.train.group_by_length is False
    assert not any("group_by_length" in note for note in older.notes)


@pytest.mark.parametrize("new_max_steps", [6, 16], ids=["shortened", "lengthened"])
def test_a_resume_with_a_new_max_steps_continues_the_learning_rate_smoothly(tiny_model_dir, tmp_path, new_max_steps):
    data = _demo_subset(tmp_path)
    config = tiny_config(tiny_model_dir, *EQUIVALENCE, f"data.path={data}")
    assert run_training(tmp_path / "part1", config, run_class=_stop_at(4)) == 0
    first = {e["step"]: e["lr"] for e in read_events(tmp_path / "part1" / "events.jsonl") if e["type"] == "step"}
    reached = first[4]
    resumed = open_bundle(tmp_path / "part1" / "handoff")
    resumed.config.train.max_steps = new_max_steps
    assert run_training(tmp_path / "part2", resumed.config, resume_from=resumed.path) == 0
    events = read_events(tmp_path / "part2" / "events.jsonl")
    note = next(e for e in events if e["type"] == "resumed")["schedule"]
    assert f"train.max_steps changed 10 → {new_max_steps}" in note and "no jump" in note
    lrs = [e["lr"] for e in events if e["type"] == "step"]
    left = new_max_steps - 4
    assert len(lrs) == left
    assert reached * 0.5 < lrs[0] <= reached, "step 5 takes the rate the old schedule had reached: no jump"
    expected = [lrs[0] * 0.5 * (1 + math.cos(math.pi * k / left)) for k in range(left)]
    assert lrs == pytest.approx(expected, rel=1e-6), "then the cosine shape over the steps left"


def test_lengthening_a_finished_run_starts_a_new_schedule_instead_of_training_at_rate_zero(tiny_model_dir, tmp_path):
    data = _demo_subset(tmp_path)
    config = tiny_config(tiny_model_dir, *EQUIVALENCE, f"data.path={data}")
    assert run_training(tmp_path / "part1", config) == 0
    first = [e["lr"] for e in read_events(tmp_path / "part1" / "events.jsonl") if e["type"] == "step"]
    assert first[-1] < 0.05 * config.train.learning_rate, "cosine decays to ~0 by the last planned step"
    resumed = open_bundle(tmp_path / "part1" / "handoff")
    resumed.config.train.max_steps = 16
    assert run_training(tmp_path / "part2", resumed.config, resume_from=resumed.path) == 0
    events = read_events(tmp_path / "part2" / "events.jsonl")
    note = next(e for e in events if e["type"] == "resumed")["schedule"]
    assert note == ("train.max_steps changed 10 → 16: the old schedule had ended at step 10, so a new one starts — "
                    f"2 warmup steps to train.learning_rate={config.train.learning_rate:g}, then the cosine shape "
                    "over the 6 steps left")
    lrs = [e["lr"] for e in events if e["type"] == "step"]
    rate = config.train.learning_rate
    expected = [0.0, rate / 2] + [rate * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12), "warmup to the configured rate, then cosine"
    from safetensors.torch import load_file

    before = load_file(tmp_path / "part1" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "part2" / "adapter" / "adapter_model.safetensors")
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4, "the adapter trained on"
