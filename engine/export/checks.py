"""Proving an exported file works: the same prompts through two models, compared logit by logit and answer by
answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.data.prompts import PromptItem

CHECK_NEW_TOKENS = 32


@dataclass
class Behaviour:
    """What a model did on the check prompts: prompt logits (float32, on CPU), greedy answers, and the token ids
    its tokenizer made of each prompt."""

    logits: list[Any]
    answers: list[str]
    token_ids: list[list[int]]
    format_ok: list[bool | None] = field(default_factory=list)


def prompt_ids(tokenizer, prompts: list[PromptItem]) -> list[list[int]]:
    """Each prompt rendered through the chat template (with the assistant's opening) and tokenized."""
    ids = []
    for item in prompts:
        encoded = tokenizer.apply_chat_template(item.messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=True)
        ids.append(list(encoded["input_ids"]))
    return ids


def behaviour(model, tokenizer, prompts: list[PromptItem], *, format_regex: str = "",
              max_new_tokens: int = CHECK_NEW_TOKENS, token_ids: list[list[int]] | None = None) -> Behaviour:
    """Run the check prompts through `model`: logits over each prompt and a greedy answer. `token_ids` feeds the
    same ids to every model compared (the tokenizers are compared separately)."""
    import re

    import torch

    ids = token_ids if token_ids is not None else prompt_ids(tokenizer, prompts)
    device = next(model.parameters()).device
    logits, answers = [], []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for row in ids:
            tensor = torch.tensor([row], device=device)
            logits.append(model(input_ids=tensor).logits[0].float().cpu())
            generated = model.generate(input_ids=tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad)
            answers.append(tokenizer.decode(generated[0, len(row):], skip_special_tokens=True))
    format_ok = [re.fullmatch(format_regex, answer.strip()) is not None if format_regex else None
                 for answer in answers]
    return Behaviour(logits, answers, ids, format_ok)


def compare(reference: Behaviour, other: Behaviour) -> dict[str, Any]:
    """How far `other` is from `reference`: the largest logit difference, how often the top token agrees, and
    how many greedy answers are identical."""
    max_diff, agree, positions = 0.0, 0, 0
    for a, b in zip(reference.logits, other.logits):
        max_diff = max(max_diff, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0]
    same = sum(x == y for x, y in zip(reference.answers, other.answers))
    return {"max_abs_logit_diff": max_diff, "top1_agreement": agree / positions if positions else 1.0,
            "same_answers": same, "answers": len(reference.answers)}
