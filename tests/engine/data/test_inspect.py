"""Dataset inspection: each finding fires on a crafted dataset and stays quiet on a clean one."""

import json
import subprocess

import pytest

from engine.errors import DataError
from engine.data.inspect import inspect_dataset, write_fixed_copy
from tests.conftest import LORADECK, REPO, SAMPLE_DATA, real_dataset

CLEAN = [
    {"instruction": "What is the capital of France?", "output": "The capital of France is Paris."},
    {"instruction": "Name a primary colour.", "output": "Red is one of the three primary colours."},
    {"instruction": "How many legs does a spider have?", "output": "A spider has eight legs."},
    {"instruction": "What is two plus two?", "output": "Two plus two equals four."},
    {"instruction": "Which planet is known as the red planet?", "output": "Mars is known as the red planet."},
]


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def codes(report):
    return {f.code: f.rows for f in report.findings}


def run(path, tokenizer, **kwargs):
    return inspect_dataset(path, tokenizer, model_name="smollm2-135m-instruct", **kwargs)


def test_clean_data_has_no_findings_and_exact_token_accounting(smollm_tokenizer, tmp_path):
    report = run(write(tmp_path, CLEAN), smollm_tokenizer)
    assert report.findings == [] and report.worst() == "ok"
    assert report.format == "alpaca" and report.rows == 5
    assert report.tokens_trained == sum(report.trained_per_sample) > 0
    assert sum(report.lengths) == report.tokens_trained + report.tokens_masked
    assert sum(count for _, _, count in report.histogram()) == 5


CASES = {
    # code: rows that trigger it (appended to the clean rows; record numbers start at 6)
    "duplicate": [CLEAN[0]],
    "near_duplicate": [{"instruction": "what is the capital of france", "output": "The capital of France is PARIS"}],
    "duplicate_answer": [{"instruction": "Capital city of France?", "output": "The capital of France is Paris."}],
    "empty_answer": [{"instruction": "Say nothing.", "output": "   "}],
    "short_answer": [{"instruction": "Is water wet? Answer y or n.", "output": "y"}],
    "placeholder": [{"instruction": "Who are you?", "output": "I am {{name}}, made by {{author}}."}],
    "html": [{"instruction": "Describe a sunny day.", "output": "It is a <div>bright</div> day&nbsp;outside."}],
    "mid_sentence": [{"instruction": "Tell me about rivers.",
                      "output": "Rivers carry water from the mountains down to the sea and shape the land as"}],
    "mixed_script": [{"instruction": "Переведи слово кошка.", "output": "Кошка по-английски будет cat. Это животное."}],
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_finding_fires_on_its_rows_only(code, smollm_tokenizer, tmp_path):
    report = run(write(tmp_path, CLEAN + CASES[code]), smollm_tokenizer)
    found = codes(report)
    assert code in found, f"{code} not reported: {found}"
    assert 6 in found[code]
    assert not any(r in found[code] for r in range(1, 6)) or code in ("duplicate_answer", "near_duplicate"), found


def test_html_inside_code_is_an_answer_not_junk_and_duplicates_name_what_they_repeat(smollm_tokenizer, tmp_path):
    code_answers = [
        {"instruction": "Write a minimal HTML page.", "output": "Here it is:\n```html\n<html><body><p>Hi</p></body>"
                                                                  "</html>\n```\nSave it as index.html."},
        {"instruction": "Which tag makes a line break?", "output": "Use the `<br>` tag inside a paragraph."},
        {"instruction": "Make an HTML table of two names.", "output": "<table><tr><td>Ann</td><td>Bo</td></tr></table>"},
    ]
    report = run(write(tmp_path, CLEAN + code_answers + [CLEAN[2]]), smollm_tokenizer)
    found = {f.code: f for f in report.findings}
    assert "html" not in found, found.get("html")
    assert found["duplicate"].rows == [9] and found["duplicate"].repeats == {9: 3}
    assert found["duplicate"].examples() == "9 (= 3)", "which record it repeats"


def test_the_histogram_stops_at_p99_and_counts_the_longer_rows(smollm_tokenizer, tmp_path):
    rows = [dict(CLEAN[i % 5], instruction=f"{CLEAN[i % 5]['instruction']} ({i})") for i in range(199)]
    rows.append({"instruction": "Summarise: " + "word " * 2000, "output": "A short summary."})
    report = run(write(tmp_path, rows), smollm_tokenizer, max_length=64)
    buckets = report.histogram()
    assert buckets[-1][1] < 200 and sum(count for _, _, count in buckets) == 199, "one huge row is not a bar"
    longer, longest = report.outliers()
    assert longer == 1 and longest > 2000


def test_truncation_and_untrained_samples_are_counted_with_their_rows(smollm_tokenizer, tmp_path):
    long_prompt = {"instruction": "Summarise: " + "word " * 300, "output": "A short summary."}
    report = run(write(tmp_path, CLEAN + [long_prompt]), smollm_tokenizer, max_length=64)
    found = codes(report)
    assert found["truncated"] == [6] and found["untrained"] == [6]
    assert report.truncated_rows == [6] and report.untrained_rows == [6]
    assert report.worst() == "error"
    assert any(low < 64 <= high for low, high, _ in report.histogram())


def test_role_order_trailing_user_and_varying_system_prompt(smollm_tokenizer, tmp_path):
    def chat(*turns, system=None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": role, "content": text} for role, text in turns]
        return {"messages": messages}
    rows = [chat(("user", "Hi there."), ("assistant", "Hello! How can I help?"), system="Be brief."),
            chat(("user", "Name a fruit."), ("assistant", "An apple is a fruit."), system="Be brief."),
            chat(("assistant", "I speak first."), ("user", "Odd."), ("assistant", "Indeed it is.")),
            chat(("user", "One."), ("user", "Two."), ("assistant", "Three."), system="Be brief."),
            chat(("user", "Question?"), ("assistant", "Answer."), ("user", "And then?"), system="Be verbose.")]
    found = codes(run(write(tmp_path, rows), smollm_tokenizer))
    assert found["role_order"] == [3, 4]
    assert found["trailing_user"] == [5]
    assert found["system_varies"] == [3, 5]


def test_a_template_that_leaves_the_stop_token_untrained_is_an_error(smollm_tokenizer, tmp_path):
    import copy

    tokenizer = copy.deepcopy(smollm_tokenizer)
    # A template whose assistant turn ends without <|im_end|>: nothing teaches the model to stop.
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "{% if m['role'] != 'assistant' %}<|im_end|>\n{% endif %}{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert "no_eos" in codes(run(write(tmp_path, CLEAN), tokenizer))
    assert "no_eos" not in codes(run(write(tmp_path, CLEAN), smollm_tokenizer))


def test_fix_writes_a_clean_copy_and_never_touches_the_original(smollm_tokenizer, tmp_path):
    rows = CLEAN + [CLEAN[1], {"instruction": "Nothing?", "output": ""}, CASES["placeholder"][0]]
    source = write(tmp_path, rows)
    before = source.read_bytes()
    report = run(source, smollm_tokenizer)
    lines = write_fixed_copy(source, report, tmp_path / "clean.jsonl")
    kept = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert kept == CLEAN + [CASES["placeholder"][0]]  # placeholders are reported, not guessed
    assert source.read_bytes() == before
    assert "removed 1 exact duplicate samples" in lines and lines[-1].startswith("wrote 6 of 8 rows")
    with pytest.raises(DataError, match="not the original"):
        write_fixed_copy(source, report, source)


@pytest.mark.parametrize("name,data_format", [("alpaca_en_demo.json", "alpaca"), ("identity.json", "alpaca"),
                                              ("glaive_toolcall_en_demo.json", "sharegpt"),
                                              ("c4_demo.jsonl", "text"), ("dpo_en_demo.json", "preference")])
def test_real_world_files_inspect_with_the_right_format(name, data_format, smollm_tokenizer):
    report = run(real_dataset(name), smollm_tokenizer)
    assert report.format == data_format and report.rows > 0 and report.tokens_trained > 0
    found = codes(report)
    assert "role_order" not in found and "no_eos" not in found
    if name == "identity.json":
        assert len(found["placeholder"]) > 80


def test_cli_prints_80_columns_json_and_one_line_errors(tmp_path):
    demo = SAMPLE_DATA / "demo_train.jsonl"
    config = SAMPLE_DATA / "configs" / "demo.toml"  # --config after the command, as after any other
    result = subprocess.run(LORADECK + ["inspect", str(demo), "--config", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "format     alpaca" in result.stdout and "◀ max_length" in result.stdout
    assert "125 train / 24 held out" in result.stdout, "the config's eval_path holds out, as in training"
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    result = subprocess.run(LORADECK + ["inspect", str(demo), "--json", "--max-length", "48"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    data = json.loads(result.stdout)
    assert data["max_length"] == 48 and data["rows"] == 125 and data["percentiles"]["max"] > 48
    assert data["verdict"] in ("warning", "error") and any(f["code"] == "truncated" for f in data["findings"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": \n')
    result = subprocess.run(LORADECK + ["inspect", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "bad.jsonl:2: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_mask_segments_show_exactly_the_trained_answer(smollm_tokenizer, tmp_path):
    from engine.data.inspect import mask_segments

    report = run(write(tmp_path, CLEAN), smollm_tokenizer, max_length=1024)
    segments = mask_segments(smollm_tokenizer, report.conversations[0], 1024)
    trained = "".join(s.text for s in segments if s.kind == "trained")
    assert trained == "The capital of France is Paris.<|im_end|>\n"
    assert "What is the capital of France?" in "".join(s.text for s in segments if s.kind == "masked")
    cut = mask_segments(smollm_tokenizer, report.conversations[0], 20)
    assert cut[-1].kind == "cut" and "Paris" in cut[-1].text


def test_an_answer_far_longer_than_the_rest_is_reported(smollm_tokenizer, tmp_path):
    rows = CLEAN * 2 + [{"instruction": f"Question {i}?", "output": f"Answer {i} is short."} for i in range(5)]
    rows = [dict(r, instruction=r["instruction"] + f" ({i})") for i, r in enumerate(rows)]  # no duplicates
    long_row = {"instruction": "Paste the manual.", "output": "This section explains the setup. " * 100}
    found = codes(run(write(tmp_path, rows + [long_row]), smollm_tokenizer))
    assert found.get("long_answer") == [16]
    assert "long_answer" not in codes(run(write(tmp_path, rows), smollm_tokenizer))


def test_a_broken_file_is_refused_before_the_tokenizer_loads_and_a_sound_one_loads_it_once(tmp_path, smollm_tokenizer):
    loads = []

    def load_tokenizer():
        loads.append(1)
        return smollm_tokenizer

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": \n')
    with pytest.raises(DataError, match="bad.jsonl:2: invalid JSON"):
        inspect_dataset(bad, model_name="m", load_tokenizer=load_tokenizer)
    assert loads == []
    report = inspect_dataset(write(tmp_path, CLEAN), model_name="m", load_tokenizer=load_tokenizer)
    assert loads == [1] and report.rows == len(CLEAN)
