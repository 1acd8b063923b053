"""Conversations to training samples: rendered through the model's chat template, tokenized, with a loss mask.

Labels are built from the character spans of assistant turns in the rendered
text (one batched fast-tokenizer call with offsets), so what is trained is
exactly what the template wrote for the assistant, end-of-turn token included.
`prepare_data` is what training calls: read, split, tokenize.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from engine.data.readers import Conversation, load_dataset_file, split_eval, to_conversations
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
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def _template_mentions_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template


def render(tokenizer, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The text the chat template writes for a conversation and the character spans of its assistant turns."""
    if conversation.messages is None:
        eos = tokenizer.eos_token or ""
        return conversation.text + eos, [(0, len(conversation.text) + len(eos))]
    messages = conversation.messages
    kwargs = {}
    if conversation.tools:
        if _template_mentions_tools(tokenizer):
            kwargs["tools"] = conversation.tools
        else:  # the template ignores tools: keep them visible to the model in the system message
            schema = "Available tools:\n" + json.dumps(conversation.tools, ensure_ascii=False)
            if messages[0]["role"] == "system":
                messages = [{"role": "system", "content": messages[0]["content"] + "\n\n" + schema}] + messages[1:]
            else:
                messages = [{"role": "system", "content": schema}] + messages
    full = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True,
                                               **kwargs) if index else ""
        # The last turn's prefix is the whole text: one template render fewer per row.
        through = full if index == len(messages) - 1 else tokenizer.apply_chat_template(
            messages[:index + 1], tokenize=False, **kwargs)
        if full.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
        else:  # a template that rewrites earlier turns: fall back to finding the answer text
            start = full.find(message["content"], spans[-1][1] if spans else 0)
            if start >= 0:
                spans.append((start, start + len(message["content"])))
    return full, spans


def tokenize_conversations(tokenizer, conversations: list[Conversation], max_length: int,
                           train_on: str = "completions") -> list[TokenizedSample]:
    """Render and tokenize in one batched call; label tokens inside assistant spans (or all tokens)."""
    if not conversations:
        return []
    rendered = [render(tokenizer, conversation) for conversation in conversations]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    samples = []
    for (text, spans), ids, offsets, conversation in zip(rendered, encoded["input_ids"], encoded["offset_mapping"],
                                                         conversations):
        if train_on == "all":
            labels = list(ids)
        else:
            labels = [IGNORE_INDEX] * len(ids)
            span_index = 0
            for position, (start, end) in enumerate(offsets):
                while span_index < len(spans) and spans[span_index][1] <= start:
                    span_index += 1
                if span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1] and end > start:
                    labels[position] = ids[position]
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


def prepare_data(data_config, tokenizer, seed: int) -> PreparedData:
    """Load, convert, split and tokenize the configured data; refuse data that would train nothing."""
    if not data_config.path:
        raise DataError("data.path is empty — set it in the config or with --set data.path=FILE")
    loaded = load_dataset_file(data_config.path, data_config.format)
    conversations = to_conversations(loaded, data_config.system_prompt)
    if data_config.eval_path:
        eval_loaded = load_dataset_file(data_config.eval_path, data_config.format)
        train_conv, eval_conv = conversations, to_conversations(eval_loaded, data_config.system_prompt)
    else:
        train_conv, eval_conv = split_eval(conversations, data_config.eval_split, seed)
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
