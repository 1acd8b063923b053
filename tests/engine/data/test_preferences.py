"""Preference pairs as DPO reads them, and what inspect says about them."""

import json

import pytest

from engine.data.preferences import length_bias, load_preference_data, preference_pairs
from engine.data.readers import load_dataset_file
from engine.errors import DataError
from tests.conftest import real_dataset


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_every_preference_shape_reads_as_prompt_chosen_rejected(tmp_path):
    rows = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},  # plain text
        {"prompt": [{"role": "user", "content": "Q2"}], "chosen": [{"role": "assistant", "content": "good2"}],
         "rejected": [{"role": "assistant", "content": "bad2"}]},  # as the blind A/B screen writes it
        {"conversations": [{"from": "human", "value": "Q3"}], "chosen": {"from": "gpt", "value": "good3"},
         "rejected": {"from": "gpt", "value": "bad3"}},  # LLaMA-Factory's sharegpt pairs
        {"chosen": [{"role": "user", "content": "Q4"}, {"role": "assistant", "content": "good4"}],
         "rejected": [{"role": "user", "content": "Q4"}, {"role": "assistant", "content": "bad4"}]},  # implicit prompt
    ]
    pairs = preference_pairs(load_dataset_file(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert [p.prompt[-1]["content"] for p in pairs] == ["Q1", "Q2", "Q3", "Q4"]
    assert [p.answer_text("chosen") for p in pairs] == ["good", "good2", "good3", "good4"]
    assert [p.answer_text("rejected") for p in pairs] == ["bad", "bad2", "bad3", "bad4"]
    assert pairs[1].as_trl_row() == rows[1]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "chosen": "good"}, "missing 'rejected'"),
    ({"chosen": "good", "rejected": "bad"}, "without a prompt"),
    ({"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": "bad"}, "must be the assistant's"),
])
def test_broken_pairs_are_one_line_errors_naming_the_row(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q0", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as error:
        load_preference_data(path)
    assert message in str(error.value) and "p.jsonl:2" in str(error.value) and "\n" not in str(error.value)


def test_identical_pairs_and_length_bias_are_noted(tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": "a long and detailed reply " * 3, "rejected": "short"} for i in range(8)]
    rows.append({"prompt": "Q9", "chosen": "same", "rejected": "same"})
    data = load_preference_data(write_jsonl(tmp_path / "p.jsonl", rows), eval_split=0)
    assert len(data.train) == 9 and not data.eval
    assert any("same chosen and rejected reply (rows 9)" in note for note in data.notes)
    assert any(note.startswith("length bias: the chosen reply is longer in 100% of pairs") for note in data.notes)
    balanced = rows[:4] + [{"prompt": "R", "chosen": "ok", "rejected": "a much longer rejected reply"}] * 4
    assert length_bias(preference_pairs(load_dataset_file(write_jsonl(tmp_path / "b.jsonl", balanced))))[
        "chosen_longer"] == 0.5


def test_inspect_reports_pairs_identical_pairs_and_length_bias(tmp_path, smollm_tokenizer):
    from engine.data.inspect import inspect_dataset

    rows = [{"prompt": f"Q{i}", "chosen": "a long and detailed reply " * 3, "rejected": "short"} for i in range(6)]
    rows += [{"prompt": "Q9", "chosen": "same", "rejected": "same"}, {"prompt": "Q10", "chosen": "only one"}]
    report = inspect_dataset(write_jsonl(tmp_path / "p.jsonl", rows), smollm_tokenizer, model_name="smollm2")
    assert report.preference["pairs"] == 7 and report.preference["identical"] == 1
    assert report.preference["length_bias"]["unit"] == "tokens"
    findings = {f.code: f for f in report.findings}
    assert findings["identical_pair"].rows == [7] and findings["unpaired"].rows == [8]
    assert any(note.startswith("length bias:") for note in report.notes)
    assert report.to_dict()["preference"]["pairs"] == 7


def test_the_real_dpo_demo_set_reads_as_pairs():
    data = load_preference_data(real_dataset("dpo_en_demo.json"), eval_split=0.1, seed=42)
    assert len(data.train) + len(data.eval) == 300 and len(data.eval) == 30
    assert all(p.prompt[-1]["role"] == "user" and p.chosen[0]["role"] == "assistant" for p in data.train)
