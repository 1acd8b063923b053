"""Blind A/B bookkeeping and prompt sets: shuffle, verdict files, the honest tally, held-out prompts."""

import json
import random

import pytest

from engine.data.readers import load_dataset_file, split_eval, to_conversations
from engine.errors import DataError
from engine.data.prompts import held_out_prompts, prompts_from_file
from engine.chat.rating import RatingLog, Tally, blind_sides, tally, wilson_interval
from tests.conftest import REPO, SAMPLE_DATA

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def test_blind_sides_put_each_model_left_about_half_the_time():
    rng = random.Random(0)
    lefts = [blind_sides(("adapter", "base"), rng)[0] for _ in range(1000)]
    assert 450 < lefts.count("adapter") < 550
    assert all(sorted(blind_sides(("adapter", "base"), rng)) == ["adapter", "base"] for _ in range(10))


def test_ratings_and_dpo_preferences_are_written_side_aware(tmp_path):
    log = RatingLog(tmp_path / "chat")
    log.record(QUESTION, ("base", "five"), ("tuned", "4"), "right", {"seed": 0})
    log.record(QUESTION, ("tuned", "4"), ("base", "four"), "tie")
    log.record(QUESTION, ("tuned", "22"), ("base", "5"), "both_bad")
    log.record(QUESTION, ("base", "five"), ("tuned", "4"), "left")
    rows = log.rows()
    assert [r["winner"] for r in rows] == ["tuned", None, None, "base"]
    preferences = [json.loads(line) for line in log.preferences_path.read_text().splitlines()]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in preferences] == [("4", "five"),
                                                                                               ("five", "4")]
    assert preferences[0]["prompt"] == QUESTION and preferences[0]["chosen_model"] == "tuned"
    result = tally(rows, "tuned", "base")
    assert (result.wins, result.losses, result.ties, result.both_bad) == (1, 1, 1, 1)
    with pytest.raises(ValueError):
        log.record(QUESTION, ("a", "x"), ("b", "y"), "maybe")


def test_the_preference_file_trains_as_preference_data(tmp_path):
    log = RatingLog(tmp_path)
    for answer in ("4", "four"):
        log.record(QUESTION, ("tuned", answer), ("base", "5"), "left")
    loaded = load_dataset_file(log.preferences_path)
    assert loaded.format == "preference"
    conversation = to_conversations(loaded)[0]
    assert conversation.messages == QUESTION + [{"role": "assistant", "content": "4"}]


def test_tally_only_claims_a_difference_when_the_interval_excludes_half():
    assert wilson_interval(8, 10) == pytest.approx((0.490, 0.943), abs=1e-3)
    assert "no clear difference" in Tally("tuned", "base", wins=8, losses=2).verdict()
    assert "tuned is better than base" in Tally("tuned", "base", wins=9, losses=1).verdict()
    assert "tuned is worse than base" in Tally("tuned", "base", wins=1, losses=9).verdict()
    assert Tally("tuned", "base", wins=8, losses=2).more_needed() == 1
    assert Tally("tuned", "base", wins=5, losses=5).more_needed() is None
    assert Tally("tuned", "base", ties=3).verdict() == "no decided prompts yet (3 ties, 0 both bad)"
    summary = Tally("tuned", "base", wins=6, losses=2, ties=1).summary()
    assert "tuned wins 6 · base wins 2 · ties 1" in summary and "75% of 8 decided" in summary


def test_prompts_from_text_and_dataset_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("First question?\n\n  Second question?  \n")
    assert [p.text for p in prompts_from_file(text)] == ["First question?", "Second question?"]
    items = prompts_from_file(SAMPLE_DATA / "demo_heldout.jsonl")
    assert len(items) == 24 and items[0].text == "What is the opposite of 'ancient'?"
    assert items[0].reference.startswith("ANSWER: modern") and items[0].source.endswith("demo_heldout.jsonl:1")
    only_prompts = tmp_path / "only.jsonl"
    only_prompts.write_text('{"prompt": "Hi?"}\n{"question": "Why?"}\n')
    assert [p.text for p in prompts_from_file(only_prompts)] == ["Hi?", "Why?"]
    with_system = prompts_from_file(text, system_prompt="Be brief.")
    assert with_system[0].messages[0] == {"role": "system", "content": "Be brief."}


def test_prompt_files_with_problems_say_where(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prompts_from_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"other": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no prompt here"):
        prompts_from_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no prompts found"):
        prompts_from_file(empty)


def test_held_out_prompts_are_the_rows_training_kept_out(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    demo = held_out_prompts(SAMPLE_DATA / "runs" / "demo-finished")  # its config names demo_heldout.jsonl
    assert len(demo) == 24
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(f'[data]\npath = "{SAMPLE_DATA / "demo_train.jsonl"}"\neval_split = 0.1\n'
                                         '[train]\nseed = 7\n')
    expected = split_eval(to_conversations(load_dataset_file(SAMPLE_DATA / "demo_train.jsonl")), 0.1, 7)[1]
    items = held_out_prompts(run_dir)
    assert [i.messages for i in items] == [c.messages[:-1] for c in expected]
    assert [i.reference for i in items] == [c.messages[-1]["content"] for c in expected]
