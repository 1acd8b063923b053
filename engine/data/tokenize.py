"""Conversations to training samples: rendered through the model's chat template, tokenized, with a loss mask.

Labels are built from the character spans of assistant turns in the rendered
text (one batched fast-tokenizer call with offsets), so what is trained is
exactly what the template wrote for the assistant, end-of-turn token included.
`prepare_data` is what training calls: read, split, tokenize.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from engine.data.readers import (Conversation, LoadedDataset, load_dataset_file, require_data_path, to_conversations,
                                 training_split, turn_text)
from engine.errors import DataError

IGNORE_INDEX = -100


@dataclass
class TokenizedSample:
    """Token ids, labels (IGNORE_INDEX where masked) and bookkeeping for one sample."""

    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation
    record_number: int

    @property
    def trained_tokens(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def _template(tokenizer) -> str:
    return getattr(tokenizer, "chat_template", None) or ""


def template_messages(tokenizer, conversation: Conversation) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and `apply_chat_template` keyword arguments for a conversation, for this tokenizer's template.

    Tools and tool calls go through the template where it supports them; otherwise the tool schemas join the
    system message and each call becomes JSON text in its assistant turn, so the model still sees them.
    Loss weights are loradeck's business and never reach the template.
    """
    template = _template(tokenizer)
    native_calls = "tool_calls" in template
    messages = []
    for message in conversation.messages:
        out = {key: value for key, value in message.items() if key != "weight"}
        if "tool_calls" in out and not native_calls:
            out["content"] = turn_text(out)
            del out["tool_calls"]
        messages.append(out)
    kwargs: dict[str, Any] = {}
    if conversation.tools:
        if "tools" in template:
            kwargs["tools"] = conversation.tools
        else:
            schema = "Available tools:\n" + json.dumps(conversation.tools, ensure_ascii=False)
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + schema}
            else:
                messages.insert(0, {"role": "system", "content": schema})
    return messages, kwargs


def _trained_turns(conversation: Conversation, messages: list[dict[str, Any]]) -> list[int]:
    """Indexes (into the template messages) of assistant turns that carry loss (weight 0 ones do not)."""
    offset = len(messages) - len(conversation.messages)  # a system message added for tools shifts every index
    return [index + offset for index, message in enumerate(conversation.messages)
            if message["role"] == "assistant" and message.get("weight", 1) != 0]


def _exact_spans(tokenizer, messages, kwargs, full: str, turns: list[int]) -> list[tuple[int, int]]:
    """Assistant spans from prefix renders: what the template writes up to each turn, and through it."""
    spans = []
    for index in turns:
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True,
                                               **kwargs) if index else ""
        through = full if index == len(messages) - 1 else tokenizer.apply_chat_template(
            messages[:index + 1], tokenize=False, **kwargs)
        if full.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
        else:  # a template that rewrites earlier turns: fall back to finding the answer text
            start = full.find(messages[index]["content"], spans[-1][1] if spans else 0)
            if start >= 0:
                spans.append((start, start + len(messages[index]["content"])))
    return spans


@dataclass
class _TurnShape:
    """What a chat template writes around an assistant's content, learned once per template."""

    header: str  # e.g. "<|im_start|>assistant\n"
    footer: str  # e.g. "<|im_end|>\n"
    checked: int = 0  # rows whose one-render spans were compared with the exact method
    trusted: bool = True


_TURN_SHAPES: dict[tuple, _TurnShape | None] = {}
_ROWS_TO_CHECK = 3


def _turn_shape(tokenizer) -> _TurnShape | None:
    key = (_template(tokenizer), tokenizer.bos_token, tokenizer.eos_token)
    if key not in _TURN_SHAPES:
        shape = None
        try:
            question = [{"role": "user", "content": "loradeck probe question"}]
            without = tokenizer.apply_chat_template(question, tokenize=False)
            prompted = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
            answered = tokenizer.apply_chat_template(question + [{"role": "assistant", "content": "PROBE-ANSWER"}],
                                                     tokenize=False)
            header = prompted[len(without):]
            turn = answered[len(without):]
            if prompted.startswith(without) and answered.startswith(without) and turn.startswith(header + "PROBE-ANSWER"):
                shape = _TurnShape(header, turn[len(header) + len("PROBE-ANSWER"):])
        except Exception:  # a template that cannot render the probe: every row takes the exact path
            shape = None
        _TURN_SHAPES[key] = shape
    return _TURN_SHAPES[key]


def _one_render_spans(shape: _TurnShape, messages, full: str, turns: list[int]) -> list[tuple[int, int]] | None:
    """Assistant spans found in the one rendering by the template's turn header and footer; None when this row
    does not look the way the template's probe said it would."""
    spans, cursor, wanted = [], 0, set(turns)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if "tool_calls" in message:
            return None  # the template writes the calls in its own way: only prefix renders know where
        found = full.find(shape.header + message["content"], cursor)
        if found < 0:
            return None
        start = found + len(shape.header)
        end = start + len(message["content"])
        if not full.startswith(shape.footer, end):
            return None
        cursor = end + len(shape.footer)
        if index in wanted:
            spans.append((start, cursor))
    return spans


def render(tokenizer, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The text the chat template writes for a conversation and the character spans of its trained assistant turns.

    One template render per row: the spans are found in that rendering from the template's assistant header and
    footer, learned once per template and checked against prefix renders on the first rows. Rows (or templates)
    that do not fit that shape take the exact path of one extra render per turn.
    """
    if conversation.messages is None:
        eos = tokenizer.eos_token or ""
        return conversation.text + eos, [(0, len(conversation.text) + len(eos))]
    messages, kwargs = template_messages(tokenizer, conversation)
    full = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    turns = _trained_turns(conversation, messages)
    shape = _turn_shape(tokenizer)
    if shape is not None and shape.trusted:
        spans = _one_render_spans(shape, messages, full, turns)
        if spans is not None:
            if shape.checked < _ROWS_TO_CHECK:
                shape.checked += 1
                exact = _exact_spans(tokenizer, messages, kwargs, full, turns)
                if spans != exact:
                    shape.trusted = False  # this template is not as simple as its probe looked
                    return full, exact
            return full, spans
    return full, _exact_spans(tokenizer, messages, kwargs, full, turns)


def _encode_with_offsets(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids and character offsets for many texts in one batched call (the Rust tokenizer directly when there is
    one: transformers' per-row conversion of its results costs as much as the tokenizing)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


def tokenize_conversations(tokenizer, conversations: list[Conversation], max_length: int,
                           train_on: str = "completions") -> list[TokenizedSample]:
    """Render and tokenize in one batched call; label tokens inside assistant spans (or all tokens)."""
    if not conversations:
        return []
    rendered = [render(tokenizer, conversation) for conversation in conversations]
    ids_batch, offsets_batch = _encode_with_offsets(tokenizer, [text for text, _ in rendered])
    samples = []
    for (text, spans), ids, offsets, conversation in zip(rendered, ids_batch, offsets_batch, conversations):
        if train_on == "all":
            labels = list(ids)
        else:
            labels = [IGNORE_INDEX] * len(ids)
            starts = [start for start, _ in offsets]
            for span_start, span_end in spans:
                # the tokens that start inside the span (offsets are in order, so two bisections find them)
                first, last = bisect_left(starts, span_start), bisect_left(starts, span_end)
                labels[first:last] = ids[first:last]
                for position in range(first, last):
                    if offsets[position][1] <= offsets[position][0]:
                        labels[position] = IGNORE_INDEX  # a zero-width token carries no text to learn
        number = conversation.source.number if conversation.source else len(samples) + 1
        samples.append(TokenizedSample(list(ids[:max_length]), labels[:max_length], len(ids), number))
    return samples


@dataclass
class PreparedData:
    """Tokenized train and eval samples plus what happened on the way (for events and `inspect`)."""

    train: list[TokenizedSample]
    eval: list[TokenizedSample]
    format: str
    format_reason: str
    notes: list[str]
    dropped_untrained: list[int]
    truncated: list[int]


@dataclass
class ReadData:
    """The configured data read and split as training splits it, before any tokenizer is needed."""

    loaded: LoadedDataset  # rows, format and the reader's notes
    train: list[Conversation]
    eval: list[Conversation]


def read_data(data_config, seed: int) -> ReadData:
    """Load, convert and split the configured data; a missing or broken file is a DataError here, before a
    model (or its tokenizer) is loaded."""
    require_data_path(data_config.path)
    loaded = load_dataset_file(data_config.path, data_config.format)
    conversations = to_conversations(loaded, data_config.system_prompt)
    train, evaluation = training_split(conversations, eval_path=data_config.eval_path, data_format=data_config.format,
                                       system_prompt=data_config.system_prompt, eval_split=data_config.eval_split,
                                       seed=seed)
    return ReadData(loaded, train, evaluation)


def prepare_data(data_config, tokenizer, seed: int, read: ReadData | None = None) -> PreparedData:
    """Tokenize the configured data (`read`, or read now by `read_data`); refuse data that would train nothing."""
    read = read or read_data(data_config, seed)
    loaded, train_conv, eval_conv = read.loaded, read.train, read.eval
    train_on = "all" if loaded.format == "text" else data_config.train_on
    train = tokenize_conversations(tokenizer, train_conv, data_config.max_length, train_on)
    evaluation = tokenize_conversations(tokenizer, eval_conv, data_config.max_length, train_on)
    dropped = [s.record_number for s in train if s.trained_tokens == 0]
    truncated = [s.record_number for s in train if s.truncated]
    if len(dropped) == len(train):
        raise DataError(f"{data_config.path}: no sample has a trained token — the loss mask hides everything "
                        f"(data.max_length={data_config.max_length} may cut off every answer; raise it or set "
                        "data.train_on=\"all\")")
    notes = list(loaded.notes)
    if dropped:
        notes.append(f"{len(dropped)} samples have no trained tokens after truncation and are skipped "
                     f"(records {', '.join(map(str, dropped[:5]))}{'…' if len(dropped) > 5 else ''})")
    if truncated:
        notes.append(f"{len(truncated)} samples are longer than data.max_length={data_config.max_length} and are "
                     "truncated")
    train = [s for s in train if s.trained_tokens > 0]
    evaluation = [s for s in evaluation if s.trained_tokens > 0]
    return PreparedData(train, evaluation, loaded.format, loaded.format_reason, notes, dropped, truncated)
