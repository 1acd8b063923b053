"""Side-by-side generation: one batched call, streaming, one base copy, common random numbers, cancel."""

import pytest

from engine.chat.generation import BASE_LABEL, ChatModels, GenerationSettings, Pane
from engine.errors import ModelError
from tests.integration.test_chat_cli import make_random_adapter

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def two_adapters(chatty_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return [make_random_adapter(chatty_model_dir, folder / "first", seed=1),
            make_random_adapter(chatty_model_dir, folder / "second", seed=2)]


@pytest.fixture(scope="module")
def models(chatty_model_dir, two_adapters):
    return ChatModels(str(chatty_model_dir), two_adapters)


def test_panes_stream_their_own_answers_in_one_call(models):
    streamed = {0: [], 1: [], 2: []}
    result = models.answer([Pane(label, QUESTION) for label in models.labels], GenerationSettings(max_new_tokens=12),
                           on_text=lambda pane, text: streamed[pane].append(text))
    texts = [answer.text for answer in result.answers]
    assert [answer.label for answer in result.answers] == ["base", "first", "second"]
    assert len(set(texts)) == 3, "each adapter must change the answer"
    for pane, answer in enumerate(result.answers):
        assert len(streamed[pane]) > 1, "text arrives piece by piece"
        assert "".join(streamed[pane]).strip() == answer.text
        # batching changes nothing: each pane alone gives the same greedy answer
        assert models.generate(answer.label, QUESTION, GenerationSettings(max_new_tokens=12)) == answer.text
    assert result.first_token_seconds is not None and result.first_token_seconds <= result.seconds


def test_multi_turn_panes_of_different_lengths_batch_with_left_padding(models):
    longer = QUESTION + [{"role": "assistant", "content": "Paris."},
                         {"role": "user", "content": "And the capital of Spain, please?"}]
    settings = GenerationSettings(max_new_tokens=8)
    result = models.answer([Pane(BASE_LABEL, QUESTION), Pane("first", longer)], settings)
    assert result.answers[0].text == models.generate(BASE_LABEL, QUESTION, settings)
    assert result.answers[1].text == models.generate("first", longer, settings)


def test_one_copy_of_the_base_weights_however_many_adapters(chatty_model_dir, two_adapters):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(chatty_model_dir)
    plain_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    plain_bytes += sum(b.numel() * b.element_size() for b in plain.buffers())
    models = ChatModels(str(chatty_model_dir), two_adapters[:1])
    weight = models.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    pointer = weight.data_ptr()
    models.add_adapter(two_adapters[1])
    models.answer([Pane(label, QUESTION) for label in models.labels], GenerationSettings(max_new_tokens=2))
    assert weight.data_ptr() == pointer, "switching adapters must not copy base weights"
    memory = models.memory()
    assert memory["base_bytes"] == plain_bytes
    assert set(memory["adapter_bytes"]) == {"first", "second"}
    assert all(0 < size < plain_bytes / 10 for size in memory["adapter_bytes"].values())
    storages = {p.untyped_storage().data_ptr() for p in models.model.parameters()}
    assert len(storages) == len(list(models.model.parameters())), "no parameter is stored twice"


def test_same_seed_gives_panes_the_same_random_draws(models):
    sampled = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    twins = models.answer([Pane(BASE_LABEL, QUESTION), Pane(BASE_LABEL, QUESTION)], sampled)
    assert twins.answers[0].text == twins.answers[1].text
    alone = models.answer([Pane(BASE_LABEL, QUESTION)], sampled)
    assert alone.answers[0].text == twins.answers[0].text
    other_seed = models.answer([Pane(BASE_LABEL, QUESTION)], GenerationSettings(12, 1.0, 0.9, seed=8))
    greedy = models.generate(BASE_LABEL, QUESTION, GenerationSettings(max_new_tokens=12))
    assert len({alone.answers[0].text, other_seed.answers[0].text, greedy}) > 1


def test_cancel_stops_every_pane_within_a_token(models):
    polls = []
    result = models.answer([Pane(label, QUESTION) for label in models.labels], GenerationSettings(max_new_tokens=64),
                           should_stop=lambda: polls.append(1) or len(polls) >= 3)
    for answer in result.answers:
        assert answer.stopped_by in ("cancelled", "eos")
        assert answer.new_tokens <= 3


def test_bad_settings_and_unknown_labels_are_clear_errors(models):
    with pytest.raises(ModelError, match="top-p"):
        models.answer([Pane(BASE_LABEL, QUESTION)], GenerationSettings(top_p=0))
    with pytest.raises(ModelError, match="unknown model label 'nope'"):
        models.answer([Pane("nope", QUESTION)])


def test_a_conversation_beyond_the_models_context_is_refused_in_one_line(models):
    long = [{"role": "user", "content": "word " * 5000}]  # the tiny model reads 1,024 positions
    with pytest.raises(ModelError) as error:
        models.answer([Pane(BASE_LABEL, long)], GenerationSettings(max_new_tokens=8))
    assert "passes the model's context of 1,024" in str(error.value) and "\n" not in str(error.value)
    fits = [{"role": "user", "content": "word " * 900}]
    with pytest.raises(ModelError, match="lower max new tokens"):
        models.answer([Pane(BASE_LABEL, fits)], GenerationSettings(max_new_tokens=200))


def test_the_worker_refuses_requests_that_are_not_objects_and_keeps_reading():
    import io

    from engine.chat.worker import serve

    events = []
    requests = io.StringIO('[1, 2]\n"stop"\n{"op": 5}\nnot json\n{"op": "generate", "id": 7, "panes": []}\n')
    serve(requests, lambda event, **fields: events.append({"event": event, **fields}))
    messages = [e["message"] for e in events if e["event"] == "error"]
    assert len(messages) == 5
    assert sum("not a request" in m for m in messages) == 3 and "unreadable request" in messages[3]
    assert messages[4] == "no model loaded yet"  # the reader survived every bad line and served the last one


def test_word_diff_marks_what_changed():
    from engine.chat.generation import word_diff

    pieces = word_diff("The capital is Paris.", "ANSWER: Paris.\nThe capital is Paris.")
    assert ("added", "ANSWER: Paris.\n") in pieces
    assert "".join(text for kind, text in pieces if kind != "removed") == "ANSWER: Paris.\nThe capital is Paris."
    assert [k for k, _ in word_diff("a b c", "a x c")] == ["same", "removed", "added", "same"]


def test_worker_process_streams_reports_errors_and_keeps_serving(chatty_model_dir, two_adapters):
    import queue

    from engine.chat.client import ChatWorkerClient

    events: queue.Queue = queue.Queue()
    client = ChatWorkerClient(events.put)

    def next_event(kind, timeout=120):
        while True:
            event = events.get(timeout=timeout)
            if event["event"] in (kind, "error", "exited"):
                return event

    try:
        client.start(str(chatty_model_dir), [str(two_adapters[0])])
        ready = next_event("ready")
        assert ready["labels"] == ["base", "first"] and ready["memory"]["base_bytes"] > 0
        client.generate(1, [{"label": "base", "messages": QUESTION}], {"top_p": 0})
        error = next_event("done")
        assert error["event"] == "error" and "top-p" in error["message"] and not error["fatal"]
        client.generate(2, [{"label": "base", "messages": QUESTION}, {"label": "first", "messages": QUESTION}],
                        {"max_new_tokens": 12})
        texts = {0: "", 1: ""}
        while True:
            event = events.get(timeout=120)
            if event["event"] == "text":
                texts[event["pane"]] += event["text"]
            elif event["event"] == "done":
                break
        assert event["id"] == 2 and [a["label"] for a in event["answers"]] == ["base", "first"]
        assert [texts[0].strip(), texts[1].strip()] == [a["text"] for a in event["answers"]]
        client.add_adapter(str(two_adapters[1]))
        assert next_event("adapter")["label"] == "second"
        client.add_adapter("/nowhere/adapter")
        missing = next_event("adapter")
        assert missing["event"] == "error" and "no such folder" in missing["message"]
        client.process.kill()
        exited = next_event("exited")
        assert exited["event"] == "exited" and exited["returncode"] == -9
        client.restart()
        again = next_event("ready")
        assert again["labels"] == ["base", "first", "second"], "a restarted worker reloads every adapter"
    finally:
        client.stop()
    assert client.process.poll() is not None


LONG_PROMPT = [{"role": "user", "content": " ".join(f"word{i}" for i in range(260))}]  # ~800 tokens: several chunks


def test_a_long_prompt_read_in_chunks_answers_exactly_as_in_one_pass(models):
    settings = GenerationSettings(max_new_tokens=10)
    panes = [Pane(BASE_LABEL, LONG_PROMPT), Pane("first", QUESTION)]  # left padding under the chunks too
    one_pass = models.answer(panes, settings)
    chunked = models.answer(panes, settings, should_stop=lambda: False)
    assert [a.text for a in chunked.answers] == [a.text for a in one_pass.answers]
    assert any(a.text for a in chunked.answers)


def test_cancel_lands_while_a_long_prompt_is_still_being_read(models):
    forwards = []
    handle = models.model.register_forward_hook(lambda module, args, output: forwards.append(1))
    polls = []
    try:
        result = models.answer([Pane(BASE_LABEL, LONG_PROMPT)], GenerationSettings(max_new_tokens=10),
                               should_stop=lambda: polls.append(1) or len(polls) >= 2)
    finally:
        handle.remove()
    assert result.answers[0].stopped_by == "cancelled" and result.answers[0].new_tokens == 0
    assert len(forwards) == 1, "one chunk read, then the cancel was seen before the next"


BAD_REQUESTS = [
    ({"op": "generate", "panes": "x"}, "panes"),
    ({"op": "generate", "panes": [{"label": "base"}]}, "messages"),
    ({"op": "generate", "panes": [{"label": "base", "messages": [{"role": "robot", "content": "hi"}]}]}, "role"),
    ({"op": "generate", "panes": [{"label": "base", "messages": [{"role": "user", "content": 5}]}]}, "role"),
    ({"op": "generate", "panes": [{"label": "base", "messages": QUESTION}], "settings": {"top_k": 5}},
     "unknown setting 'top_k'"),
    ({"op": "generate", "panes": [{"label": "base", "messages": QUESTION}], "settings": {"temperature": "hot"}},
     "finite number"),
    ({"op": "generate", "panes": [{"label": "base", "messages": QUESTION}], "settings": {"max_new_tokens": 1e9}},
     "finite number"),
    ({"op": "generate", "panes": [{"label": "base", "messages": QUESTION}] * 9}, "1–8 panes"),
    ({"op": "add_adapter", "path": ["x"]}, "path"),
]


def test_every_malformed_request_is_refused_in_one_line_and_the_worker_keeps_serving(models):
    import io
    import json

    from engine.chat import worker

    events = []
    lines = [json.dumps(request) for request, _ in BAD_REQUESTS]
    lines.append(json.dumps({"op": "generate", "id": "ok", "panes": [{"label": "base", "messages": QUESTION}],
                             "settings": {"max_new_tokens": 3}}))
    requests = io.StringIO(json.dumps({"op": "load", "base": str(models.base_name)}) + "\n" + "\n".join(lines) + "\n")
    worker.serve(requests, lambda event, **fields: events.append({"event": event, **fields}))
    errors = [e["message"] for e in events if e["event"] == "error"]
    assert len(errors) == len(BAD_REQUESTS)
    for (request, expected), message in zip(BAD_REQUESTS, errors):
        assert expected in message and "\n" not in message, (request, message)
    assert [e for e in events if e["event"] == "done"][0]["id"] == "ok"
