"""The before/after report on a tiny model trained for real: loss with training's mask, batched answers equal to
one-at-a-time answers, paired comparisons, checkpoints, the blind tally, and the files."""

from __future__ import annotations

import json
import math
import time

import pytest

from engine.chat.generation import ChatModels, GenerationSettings, Pane
from engine.chat.rating import RatingLog
from engine.eval.report import evaluate, latest_report, plan_eval, read_answers, row_losses, write_report
from engine.train.run import run_training
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained_run(chatty_model_dir, tmp_path_factory):
    """The chatty tiny model with a LoRA trained 4 steps on the demo data (a checkpoint every 2 steps), its
    [eval] section from the demo config."""
    run_dir = tmp_path_factory.mktemp("runs") / "tuned"
    config = tiny_config(chatty_model_dir, "train.max_steps=4", "train.save_every=2", "eval.max_new_tokens=12")
    assert run_training(run_dir, config) == 0
    return run_dir


def test_row_losses_equal_the_models_own_loss_under_trainings_mask(chatty_model_dir, smollm_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from engine.data.readers import load_dataset_file, to_conversations
    from engine.data.tokenize import tokenize_conversations
    from tests.conftest import SAMPLE_DATA

    model = AutoModelForCausalLM.from_pretrained(chatty_model_dir).eval()
    conversations = to_conversations(load_dataset_file(SAMPLE_DATA / "demo_heldout.jsonl"))[:5]
    samples = tokenize_conversations(smollm_tokenizer, conversations, 128, "completions")
    per_row = row_losses(model, samples, smollm_tokenizer.pad_token_id, batch_tokens=200)  # several padded batches
    for sample, (total, count) in zip(samples, per_row):
        assert count == sample.trained_tokens - (sample.labels[0] != -100), "a first token has nothing to predict it"
        with torch.no_grad():
            own = model(input_ids=torch.tensor([sample.input_ids]), labels=torch.tensor([sample.labels])).loss
        assert total / count == pytest.approx(float(own), rel=1e-4)


def test_report_on_a_trained_run(trained_run):
    RatingLog(trained_run / "chat").record([{"role": "user", "content": "q"}], ("tuned", "a"), ("base", "b"), "left")
    plan = plan_eval(trained_run, limit=6, checkpoints=True)
    assert len(plan.items) == 6 and plan.source.endswith("demo_heldout.jsonl")
    assert plan.rule.regex and plan.answer_regex == "ANSWER: (.+)", "the demo config's [eval] section"
    seen = []
    report, answers = evaluate(plan, progress=lambda fraction, message: seen.append(fraction))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)

    assert list(report["models"]) == ["base", "tuned", "tuned@step-000002"], \
        "step 4's checkpoint holds the final adapter's weights: evaluated once"
    for label, model in report["models"].items():
        assert model["heldout_loss"] > 0 and model["perplexity"] == pytest.approx(math.exp(model["heldout_loss"]))
        assert set(model["metrics"]) == {"exact_match", "token_f1", "rouge_l", "chrf", "answer", "format"}
        assert all(0.0 <= value <= 1.0 for value in model["metrics"].values())
    assert report["models"]["tuned"]["heldout_loss"] < report["models"]["base"]["heldout_loss"]
    assert [(row["label"], row["step"]) for row in report["checkpoints"]] == [("tuned@step-000002", 2), ("tuned", 4)]
    assert report["models"]["tuned@step-000002"]["checkpoint"] and not report["models"]["tuned"]["checkpoint"]
    assert report["best_checkpoint"] in report["models"]

    comparison = next(c for c in report["comparisons"] if c["model"] == "tuned")
    loss = comparison["metrics"]["heldout_loss"]
    assert loss["pairs"] == 6 and loss["wins"] + loss["losses"] + loss["ties"] == 6 and loss["lower_is_better"]
    assert loss["mean_delta"] < 0 and loss["interval"][0] <= loss["mean_delta"] <= loss["interval"][1]
    assert report["blind"] == [pytest.approx(report["blind"][0])] and report["blind"][0]["wins"] == 1

    assert len(answers) == 6 and set(answers[0]["answers"]) == set(report["models"])
    first = answers[0]["answers"]["tuned"]
    assert first["scores"]["format"] in (0.0, 1.0) and first["new_tokens"] <= 12

    folder = write_report(trained_run, report, answers)
    assert folder.parent == trained_run / "eval"
    on_disk = json.loads((folder / "report.json").read_text())
    assert on_disk["models"]["base"]["heldout_loss"] == report["models"]["base"]["heldout_loss"]
    markdown = (folder / "report.md").read_text()
    assert "| metric | base | tuned |" in markdown and "held-out loss" in markdown and "## Checkpoints" in markdown
    assert "## base vs tuned@step-000002" not in markdown, "checkpoints get a row, not a whole table"
    assert "not how good they are" in markdown and "tuned wins 1" in markdown
    assert read_answers(folder) == answers
    assert latest_report(trained_run)["folder"] == str(folder)
    assert not list((trained_run / "eval").glob(".*")), "no staging folder left behind"


def test_batched_answers_equal_one_at_a_time_answers(trained_run):
    plan = plan_eval(trained_run, limit=5, max_new_tokens=10, batch_size=3)  # batches cut across prompts
    report, answers = evaluate(plan)
    models = ChatModels(plan.base, plan.adapters)
    settings = GenerationSettings(max_new_tokens=10)
    for row, item in zip(answers, plan.items):
        for label in ("base", "tuned"):
            alone = models.answer([Pane(label, item.prompt.messages)], settings).answers[0].text
            assert row["answers"][label]["text"] == alone, (label, item.prompt.text)


def test_plan_refuses_bad_input_in_one_line(trained_run, tmp_path):
    from engine.errors import LoradeckError

    with pytest.raises(LoradeckError, match="no such run directory"):
        plan_eval(tmp_path / "nowhere")
    with pytest.raises(LoradeckError, match="no such folder"):
        plan_eval(trained_run, adapters=[tmp_path / "missing-adapter"])
    with pytest.raises(LoradeckError, match="--max-new-tokens must be 1–8192"):
        plan_eval(trained_run, max_new_tokens=0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of Peru?\n")
    plan = plan_eval(trained_run, prompts=prompts)
    assert len(plan.items) == 1 and plan.items[0].conversation is None, "a .txt has no references"


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_after_training_writes_the_report_and_an_event(chatty_model_dir, tmp_path):
    run_dir = tmp_path / "after"
    config = tiny_config(chatty_model_dir, "eval.after_training=true", "eval.limit=4", "eval.max_new_tokens=6")
    assert run_training(run_dir, config) == 0
    events = _events(run_dir)
    kinds = [e["type"] for e in events]
    assert kinds.index("finished") < kinds.index("eval_report"), "training's result is on record first"
    event = next(e for e in events if e["type"] == "eval_report")
    assert event["prompts"] == 4 and "loss" in event["headline"] and event["step"] == 3
    assert (run_dir / "eval").is_dir() and latest_report(run_dir)["folder"] == event["folder"]
    assert set(event["models"]) == {"base", "after"}


def test_after_training_skips_with_a_warning_when_the_session_clock_has_no_room(chatty_model_dir, tmp_path):
    from engine.train.run import TrainingRun

    class NoTimeLeft(TrainingRun):
        def eval_deadline(self):
            return time.time() - 1

    run_dir = tmp_path / "late"
    config = tiny_config(chatty_model_dir, "eval.after_training=true", "eval.limit=4")
    assert run_training(run_dir, config, run_class=NoTimeLeft) == 0
    events = _events(run_dir)
    assert not any(e["type"] == "eval_report" for e in events) and not (run_dir / "eval").exists()
    warning = next(e for e in events if e["type"] == "warning" and e.get("kind") == "eval")
    assert "skipped before the session deadline" in warning["message"] and "loradeck eval" in warning["message"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()


def test_a_deadline_mid_answers_stops_the_report(trained_run):
    plan = plan_eval(trained_run, limit=6, max_new_tokens=12, batch_size=2)
    from engine.eval.report import EvalOutOfTime

    with pytest.raises(EvalOutOfTime):
        evaluate(plan, deadline=time.time() + 0.001)


def test_damaged_report_files_are_passed_over_not_shown(tmp_path):
    import shutil

    from tests.conftest import SAMPLE_DATA

    recorded = next((SAMPLE_DATA / "runs" / "demo-evaluated" / "eval").iterdir())
    run_dir = tmp_path / "run"
    shutil.copytree(recorded, run_dir / "eval" / "20261127-000000")
    good = latest_report(run_dir)
    assert good is not None and good["headline"].startswith("demo-evaluated: format 0%→100%")

    newer = run_dir / "eval" / "20261128-000000"
    newer.mkdir()
    broken = dict(good, models={"base": {"metrics": {"format": "lots"}, "heldout_loss": None}})
    (newer / "report.json").write_text(json.dumps(broken))
    assert latest_report(run_dir)["folder"] == good["folder"], "a malformed newest report gives way to the last good one"
    (newer / "report.json").write_text("{not json")
    assert latest_report(run_dir)["folder"] == good["folder"]

    answers = run_dir / "eval" / "20261127-000000" / "answers.jsonl"
    rows = answers.read_text().splitlines()
    answers.write_text("\n".join(rows[:2] + ['{"index": "x"}', "garbage", '{"index": 3, "prompt": "not a list"}']
                                 + rows[2:]) + "\n")
    assert len(read_answers(answers.parent)) == 24


def test_after_training_frees_the_trained_model_before_the_report_loads_its_own(chatty_model_dir, tmp_path):
    import gc
    import weakref

    from engine.train.run import TrainingRun

    seen = {}

    class Watched(TrainingRun):
        def after_step(self, state, control):
            super().after_step(state, control)
            seen["model"] = weakref.ref(self.model)

        def write_eval_report(self, step, say):
            gc.collect()
            seen["alive"], seen["step"] = seen["model"]() is not None, step

    assert run_training(tmp_path / "free", tiny_config(chatty_model_dir, "eval.after_training=true"),
                        run_class=Watched) == 0
    assert seen == {"model": seen["model"], "alive": False, "step": 3}, "a GPU would otherwise hold two copies"
