import json
from pathlib import Path

import pytest

from engine.config import load_config
from engine.data.readers import load_dataset_file, to_conversations
from engine.data.tokenize import IGNORE_INDEX, prepare_data, tokenize_conversations
from engine.errors import DataError
from tests.conftest import real_dataset


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def messages_of(path, data_format="auto"):
    loaded = load_dataset_file(path, data_format)
    return loaded.format, [c.messages for c in to_conversations(loaded)]


def test_alpaca_with_input_and_system(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "2 + 2", "output": "4", "system": "Be brief"}])
    found, [messages] = messages_of(path)
    assert found == "alpaca"
    assert messages == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Add\n\n2 + 2"},
                        {"role": "assistant", "content": "4"}]


def test_sharegpt_roles_and_tools(tmp_path):
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "weather?"},
                             {"from": "function_call", "value": "{\"name\": \"w\"}"},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}],
           "tools": json.dumps([{"name": "w", "description": "weather"}])}
    path = write_jsonl(tmp_path / "s.jsonl", [row])
    loaded = load_dataset_file(path)
    conversation = to_conversations(loaded)[0]
    assert loaded.format == "sharegpt"
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conversation.tools == [{"name": "w", "description": "weather"}]


def test_messages_with_openai_content_parts(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": "Hello"}]}
    found, [messages] = messages_of(write_jsonl(tmp_path / "m.jsonl", [row]))
    assert found == "messages" and messages[0]["content"] == "Hi there"


def test_prompt_completion_and_text(tmp_path):
    found, [messages] = messages_of(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "completion": "A"}]))
    assert found == "prompt_completion" and messages[-1] == {"role": "assistant", "content": "A"}
    loaded = load_dataset_file(write_jsonl(tmp_path / "t.jsonl", [{"text": "plain words"}]))
    assert loaded.format == "text" and to_conversations(loaded)[0].text == "plain words"


def test_preference_trains_on_chosen_and_says_so(tmp_path):
    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad"},
            {"conversations": [{"from": "human", "value": "Q2"}], "chosen": {"from": "gpt", "value": "good2"},
             "rejected": {"from": "gpt", "value": "bad2"}}]
    loaded = load_dataset_file(write_jsonl(tmp_path / "d.jsonl", rows))
    assert loaded.format == "preference"
    assert any("chosen" in note and "rejected" in note for note in loaded.notes)
    answers = [c.messages[-1]["content"] for c in to_conversations(loaded)]
    assert answers == ["good", "good2"]


def test_csv_parquet_and_save_to_disk_folders(tmp_path):
    import datasets

    (tmp_path / "d.csv").write_text("instruction,input,output\nSay hi,,hi\n\"Count, please\",,\"1, 2\"\n")
    assert messages_of(tmp_path / "d.csv")[1][1][0]["content"] == "Count, please"
    table = datasets.Dataset.from_list([{"prompt": "Q", "completion": "A"}])
    table.to_parquet(str(tmp_path / "d.parquet"))
    assert messages_of(tmp_path / "d.parquet")[0] == "prompt_completion"
    table.save_to_disk(str(tmp_path / "saved"))
    assert messages_of(tmp_path / "saved")[0] == "prompt_completion"


@pytest.mark.parametrize("name,expected", [("alpaca_en_demo.json", "alpaca"), ("identity.json", "alpaca"),
                                           ("glaive_toolcall_en_demo.json", "sharegpt"), ("c4_demo.jsonl", "text"),
                                           ("dpo_en_demo.json", "preference")])
def test_real_world_files_load_with_the_right_format(name, expected, smollm_tokenizer):
    loaded = load_dataset_file(real_dataset(name))
    assert loaded.format == expected
    conversations = to_conversations(loaded)
    samples = tokenize_conversations(smollm_tokenizer, conversations, 1024)
    assert len(samples) == len(loaded.records)
    assert sum(s.trained_tokens > 0 for s in samples) >= 0.95 * len(samples)


def test_completion_mask_trains_exactly_the_answer_and_end_of_turn(tmp_path, smollm_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Capital of Peru?", "output": "ANSWER: Lima"}])
    [sample] = tokenize_conversations(smollm_tokenizer, to_conversations(load_dataset_file(path)), 256)
    trained = smollm_tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX])
    assert trained == "ANSWER: Lima<|im_end|>\n"
    full = smollm_tokenizer.decode(sample.input_ids)
    assert "Capital of Peru?" in full and "Capital of Peru?" not in trained
    [everything] = tokenize_conversations(smollm_tokenizer, to_conversations(load_dataset_file(path)), 256, "all")
    assert everything.labels == everything.input_ids


def test_refuses_data_whose_answers_are_all_cut_off(tmp_path, smollm_tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "word " * 200, "output": "short"}] * 3)
    config = load_config(None, [f"data.path={path}", "data.max_length=32", "data.eval_split=0"])
    with pytest.raises(DataError, match="no sample has a trained token"):
        prepare_data(config.data, smollm_tokenizer, 0)


@pytest.mark.parametrize("name,content,message", [
    ("cut.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c", "outp', r"cut.json:1: invalid JSON .*cut off"),
    ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', r"bad.jsonl:2: invalid JSON"),
    ("missing.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
     r"missing.jsonl:2: missing 'output'"),
    ("type.json", '[{"instruction": "a", "output": ["b"]}]', r"type.json: record 1: output\[0\] is not a text part"),
    ("object.json", '[{"instruction": "a", "output": {"text": "b"}}]', r"object.json: record 1: 'output' must be text, got dict"),
    ("role.jsonl", '{"conversations": [{"from": "bot", "value": "x"}]}\n', r"role.jsonl:1: conversations\[0\]: unknown role 'bot'"),
    ("empty.jsonl", "", r"empty.jsonl: the file is empty"),
    ("noanswer.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', r"noanswer.jsonl:1: no assistant turn"),
    ("cols.jsonl", '{"question": "x", "answer": "y"}\n', r"cannot tell the format from the columns"),
])
def test_malformed_files_give_one_line_with_file_and_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        to_conversations(load_dataset_file(path))
    assert "\n" not in str(error.value)


def test_binary_and_wrong_encoding_files_are_named(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(b"\x00\x01\x02PK\x03\x04" * 10)
    with pytest.raises(DataError, match="binary file"):
        load_dataset_file(tmp_path / "bin.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2: not UTF-8"):
        load_dataset_file(tmp_path / "latin.jsonl")
