"""OpenAI's chat fine-tuning format: tool calls without content, tool results, tools per row, per-turn weights."""

import json

import pytest

from engine.data.inspect import inspect_dataset, mask_segments
from engine.data.readers import OPENAI_REASON, load_dataset_file, to_conversations
from engine.data.tokenize import IGNORE_INDEX, render, tokenize_conversations
from engine.errors import DataError
from tests.conftest import SAMPLE_DATA, tiny_config

OPENAI_SAMPLE = SAMPLE_DATA / "openai_tools.jsonl"


def trained_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX])


def test_the_sample_is_read_as_openai_messages_with_calls_results_and_weights():
    loaded = load_dataset_file(OPENAI_SAMPLE)
    assert (loaded.format, loaded.format_reason) == ("messages", OPENAI_REASON)
    first, convert = to_conversations(loaded)[0], to_conversations(loaded)[6]
    call = first.messages[2]
    assert call["role"] == "assistant" and call["content"] == ""
    assert call["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}
    assert first.messages[3] == {"role": "tool", "tool_call_id": "call_000",
                                 "content": json.dumps({"city": "Oslo", "weather": "4°C, light rain"})}
    assert first.tools[0]["function"]["name"] == "get_weather"
    assert convert.messages[1]["weight"] == 0 and "weight" not in convert.messages[3]


def test_weight_zero_turns_carry_no_loss_and_tool_calls_are_trained(smollm_tokenizer):
    conversations = to_conversations(load_dataset_file(OPENAI_SAMPLE))
    convert = conversations[6]
    text, spans = render(smollm_tokenizer, convert)
    sample = tokenize_conversations(smollm_tokenizer, [convert], 2048)[0]
    trained = trained_text(smollm_tokenizer, sample)
    assert "Let me look that up." in text and "Let me look that up." not in trained
    # SmolLM2's template has no tool support: the call is JSON text inside the trained assistant turn
    assert '{"name": "convert_currency", "arguments": {"amount": 100, "from": "EUR", "to": "USD"}}' in trained
    assert "100 EUR is about 108.2 USD." in trained
    assert '"result": 108.2' not in trained  # the tool's answer is input, not something to learn
    assert "Available tools:" in text and "Available tools:" not in trained
    assert len(spans) == 2


def test_the_mask_view_shows_weight_zero_turns_as_masked(smollm_tokenizer):
    convert = to_conversations(load_dataset_file(OPENAI_SAMPLE))[6]
    segments = mask_segments(smollm_tokenizer, convert, 2048)
    masked = "".join(s.text for s in segments if s.kind == "masked")
    trained = "".join(s.text for s in segments if s.kind == "trained")
    assert "Let me look that up." in masked and "Let me look that up." not in trained
    assert "convert_currency" in trained


def test_a_template_with_native_tool_calls_renders_them_and_trains_them(smollm_tokenizer):
    tokenizer = smollm_tokenizer.__class__.from_pretrained(smollm_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.name }}"
        "{{ c.function.arguments | tojson }}</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    first = to_conversations(load_dataset_file(OPENAI_SAMPLE))[0]
    text, _ = render(tokenizer, first)
    assert '<tool_call>get_weather{"city": "Oslo", "unit": "C"}</tool_call>' in text
    trained = trained_text(tokenizer, tokenize_conversations(tokenizer, [first], 2048)[0])
    assert "<tool_call>get_weather" in trained and "In Oslo it is" in trained


def test_one_render_spans_equal_the_exact_prefix_render_spans(smollm_tokenizer):
    from engine.data.tokenize import _exact_spans, _trained_turns, template_messages

    for conversation in to_conversations(load_dataset_file(OPENAI_SAMPLE)) + to_conversations(
            load_dataset_file(SAMPLE_DATA / "demo_train.jsonl"))[:20]:
        messages, kwargs = template_messages(smollm_tokenizer, conversation)
        text, spans = render(smollm_tokenizer, conversation)
        assert spans == _exact_spans(smollm_tokenizer, messages, kwargs, text, _trained_turns(conversation, messages))


@pytest.mark.parametrize("turn, message", [
    ({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
     "messages[1].tool_calls[0].function.arguments is not valid JSON"),
    ({"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]},
     "messages[1].tool_calls[0].function.name is missing"),
    ({"role": "assistant", "tool_calls": []}, "'messages[1].tool_calls' must be a non-empty list"),
    ({"role": "assistant", "content": "x", "weight": 0.5}, "messages[1].weight must be 0 (not trained) or 1"),
    ({"role": "user", "content": "x", "weight": 0}, "only assistant turns carry a weight"),
    ({"role": "tool", "content": "x", "tool_call_id": 7}, "messages[1].tool_call_id must be a string"),
])
def test_malformed_openai_rows_are_one_line_errors_naming_the_field(tmp_path, turn, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, turn,
                                             {"role": "assistant", "content": "ok"}]}) + "\n")
    with pytest.raises(DataError) as error:
        to_conversations(load_dataset_file(path))
    assert message in str(error.value) and str(error.value).startswith(f"{path}:1:")
    assert "\n" not in str(error.value)


def test_the_openai_sample_inspects_cleanly_and_trains(tiny_model_dir, smollm_tokenizer, tmp_path):
    from engine.run.events import read_events
    from engine.train.run import run_training

    report = inspect_dataset(OPENAI_SAMPLE, smollm_tokenizer, model_name="smollm2", max_length=1024, eval_split=0)
    assert report.rows == 10 and report.untrained_rows == []
    assert not [f for f in report.findings if f.severity == "error"]
    config = tiny_config(tiny_model_dir, f"data.path={OPENAI_SAMPLE}", "data.eval_split=0", "data.eval_path=")
    assert run_training(tmp_path / "run", config) == 0
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["type"] for e in events if e["type"] in ("finished", "error")] == ["finished"]
    assert next(e for e in events if e["type"] == "model_loaded")["format_reason"] == OPENAI_REASON
