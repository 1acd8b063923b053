"""Preference pairs for DPO: a prompt, the answer preferred and the answer rejected, from the formats `inspect`
already reads — explicit `prompt` + `chosen` + `rejected` (conversational turns or plain text, as the blind A/B
screen writes them), or whole `chosen` / `rejected` conversations whose shared opening turns are the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.readers import (LoadedDataset, Record, _require, _text, _tools, _turns_to_messages,
                                 load_dataset_file, reply_messages, split_eval)
from engine.errors import DataError


@dataclass
class PreferencePair:
    """One validated pair: `prompt` turns, then the `chosen` and the `rejected` reply turns."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    record: Record | None = None
    tools: list | None = None

    def as_trl_row(self) -> dict[str, Any]:
        """TRL's conversational preference row."""
        row = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.tools:
            row["tools"] = self.tools
        return row

    def answer_text(self, side: str) -> str:
        """The chosen or rejected reply as plain text."""
        return "".join(str(turn.get("content") or "") for turn in getattr(self, side))


@dataclass
class PreferenceData:
    """Training and held-out pairs, and what the user should know about them."""

    train: list[PreferencePair]
    eval: list[PreferencePair]
    notes: list[str]
    path: str


def to_preference_pair(record: Record, path: str, system_prompt: str = "") -> PreferencePair:
    """One raw row as a PreferencePair; a DataError names the row and what is wrong."""
    where = record.where(path)
    row = record.data
    _require(record, path, "chosen", "rejected")
    prompt_key = next((k for k in ("prompt", "conversations", "messages") if k in row), None)
    chosen = reply_messages(row["chosen"], where, "chosen")
    rejected = reply_messages(row["rejected"], where, "rejected")
    if prompt_key is not None:
        raw = row[prompt_key]
        prompt = (_turns_to_messages(raw, where, prompt_key, sharegpt=True) if isinstance(raw, list)
                  else [{"role": "user", "content": _text(raw, where, prompt_key)}])
    else:  # whole conversations: the turns both share are the prompt
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise DataError(f"{where}: preference row without a prompt — add 'prompt', or give 'chosen' and "
                            "'rejected' as whole conversations that start with the same user turn")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise DataError(f"{where}: the prompt must end with a user turn (it ends with "
                        f"{prompt[-1]['role'] if prompt else 'nothing'})")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply or reply[0]["role"] != "assistant":
            raise DataError(f"{where}: '{name}' must be the assistant's reply")
    if system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    return PreferencePair(prompt, chosen, rejected, record, _tools(record, where))


def preference_pairs(dataset: LoadedDataset, system_prompt: str = "") -> list[PreferencePair]:
    """Every row of a loaded dataset as a PreferencePair; a file that is not preference data is refused."""
    if dataset.format != "preference":
        raise DataError(f"{dataset.path}: train.method = \"dpo\" needs preference pairs (columns prompt, chosen, "
                        f"rejected), but this file reads as {dataset.format} data — rate answers blind in "
                        "`loradeck chat --blind` (it writes RUN/chat/preferences.jsonl) or point data.path at pairs")
    return [to_preference_pair(record, dataset.path, system_prompt) for record in dataset.records]


def identical_pairs(pairs: list[PreferencePair]) -> list[int]:
    """Indexes of pairs whose chosen and rejected replies are the same text: they teach nothing."""
    return [i for i, pair in enumerate(pairs) if pair.answer_text("chosen").strip() ==
            pair.answer_text("rejected").strip()]


def length_bias(pairs: list[PreferencePair], tokenizer=None) -> dict[str, float] | None:
    """How much longer the chosen replies are than the rejected ones: the share of pairs where the chosen reply is
    longer and the mean lengths (tokens with a tokenizer, else words). None without pairs that differ."""
    def size(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer is not None \
            else len(text.split())

    sizes = [(size(p.answer_text("chosen")), size(p.answer_text("rejected"))) for p in pairs]
    differing = [(c, r) for c, r in sizes if c != r]
    if not differing:
        return None
    return {"chosen_longer": sum(c > r for c, r in differing) / len(differing),
            "chosen_mean": sum(c for c, _ in sizes) / len(sizes),
            "rejected_mean": sum(r for _, r in sizes) / len(sizes),
            "unit": "tokens" if tokenizer is not None else "words"}


LENGTH_BIAS_SHARE = 0.8  # one side longer in this share of differing pairs: DPO may learn length, not quality


def length_bias_note(bias: dict[str, float] | None, pairs: int) -> str | None:
    """A warning when the chosen replies are systematically longer (or shorter), else None."""
    if bias is None or pairs < 5:
        return None
    longer = bias["chosen_longer"]
    if longer >= LENGTH_BIAS_SHARE:
        side, share, learns = "longer", longer, "longer is better"
    elif longer <= 1 - LENGTH_BIAS_SHARE:
        side, share, learns = "shorter", 1 - longer, "shorter is better"
    else:
        return None
    return (f"length bias: the chosen reply is {side} in {share:.0%} of pairs ({bias['chosen_mean']:.0f} vs "
            f"{bias['rejected_mean']:.0f} {bias['unit']} on average) — DPO may learn '{learns}'; unless length is "
            "what you prefer, add pairs where it goes the other way")


def load_preference_data(path: str | Path, *, eval_path: str | Path = "", eval_split: float = 0.1, seed: int = 42,
                         system_prompt: str = "") -> PreferenceData:
    """Training and held-out pairs as DPO takes them (held out as SFT holds rows out: `eval_path`'s pairs, else
    `eval_split` of them with the seed), with notes on identical pairs and length bias."""
    pairs = preference_pairs(load_dataset_file(path, "auto"), system_prompt)
    if not pairs:
        raise DataError(f"{path}: no preference pairs — the file is empty")
    if eval_path:
        train, held = pairs, preference_pairs(load_dataset_file(eval_path, "auto"), system_prompt)
    else:
        train, held = split_eval(pairs, eval_split, seed)
    notes = []
    same = identical_pairs(pairs)
    if same:
        rows = ", ".join(str(pairs[i].record.number) for i in same[:5] if pairs[i].record)
        notes.append(f"{len(same)} pair(s) have the same chosen and rejected reply (rows {rows}"
                     f"{', …' if len(same) > 5 else ''}): they teach nothing")
    bias = length_bias_note(length_bias(pairs), len(pairs))
    if bias:
        notes.append(bias)
    return PreferenceData(train, held, notes, str(path))


def configured_preference_data(config) -> PreferenceData:
    """The pairs a run config trains on and holds out (its data section and seed); an empty `data.path` is
    refused saying it needs preference pairs."""
    from engine.data.readers import require_data_path

    require_data_path(config.data.path, "dpo")
    return load_preference_data(config.data.path, eval_path=config.data.eval_path, eval_split=config.data.eval_split,
                                seed=config.train.seed, system_prompt=config.data.system_prompt)


def preference_samples(config, tokenizer, pairs=None) -> list:
    """Every chosen and every rejected conversation of the preference pairs (`pairs`, else the config's training
    pairs), tokenized as training renders them: a DPO batch holds both halves of each pair."""
    from engine.data.readers import Conversation
    from engine.data.tokenize import tokenize_conversations

    if pairs is None:
        pairs = configured_preference_data(config).train
    conversations = [Conversation(pair.prompt + getattr(pair, side), None, pair.tools, pair.record)
                     for pair in pairs for side in ("chosen", "rejected")]
    return tokenize_conversations(tokenizer, conversations, config.data.max_length, "completions")
