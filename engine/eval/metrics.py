"""Scores of one answer against its reference: exact match, token F1, ROUGE-L, chrF, answer found, format.

Exact match and token F1 use SQuAD's normalization (lower case, no punctuation,
no articles) as torchmetrics implements it; ROUGE-L comes from Google's
`rouge-score`, chrF from `sacrebleu`. Every score is in [0, 1]. These measure
overlap with the reference answer, which is not the same thing as quality.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

REFERENCE_METRICS = ("exact_match", "token_f1", "rouge_l", "chrf", "answer")
METRIC_NAMES = {
    "heldout_loss": "held-out loss", "exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L",
    "chrf": "chrF", "answer": "correct answer found", "format": "format conformance",
}
LOWER_IS_BETTER = ("heldout_loss",)


class _WordTokenizer:
    """ROUGE tokens: lower-cased words in any script (rouge-score's default keeps only a-z and 0-9, which scores
    every non-English answer 0)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def warm_metric_imports() -> None:
    """Import the metric libraries now (seconds, mostly torchmetrics), e.g. in a thread while weights load."""
    try:
        _rouge(), _chrf()
        import torchmetrics.functional.text.squad  # noqa: F401
    except Exception:  # the scoring itself reports a broken install, in the main thread
        pass


def normalize_answer(text: str) -> str:
    """SQuAD's normalization (torchmetrics' implementation): lower case, punctuation and articles removed,
    whitespace collapsed."""
    from torchmetrics.functional.text.squad import _normalize_text

    return _normalize_text(text)


def squad_scores(prediction: str, reference: str) -> tuple[float, float]:
    """(exact match, token F1) of one answer, in [0, 1], as SQuAD defines them."""
    from torchmetrics.functional.text.squad import _compute_exact_match_score, _compute_f1_score

    return float(_compute_exact_match_score(prediction, reference)), float(_compute_f1_score(prediction, reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def chrf(prediction: str, reference: str) -> float:
    """chrF (character n-gram F-score), in [0, 1]."""
    return float(_chrf().sentence_score(prediction, [reference]).score) / 100.0


def key_answer(reference: str, answer_regex: str) -> str:
    """The part of a reference that is the answer: `answer_regex`'s first group (or whole match) where it matches,
    else the whole reference."""
    if answer_regex:
        match = re.search(answer_regex, reference)
        if match:
            return (match.group(1) if match.re.groups else match.group(0)).strip()
    return reference.strip()


def answer_found(prediction: str, answer: str) -> bool:
    """Whether the answer appears in the prediction as whole words, both normalized (SQuAD's rule)."""
    wanted = normalize_answer(answer)
    if not wanted:
        return False
    return f" {wanted} " in f" {normalize_answer(prediction)} "


@dataclass
class FormatRule:
    """What a well-formed answer looks like: a regex the whole answer matches, or a JSON Schema it conforms to."""

    regex: str = ""
    json_schema: dict | None = None

    @property
    def defined(self) -> bool:
        return bool(self.regex) or self.json_schema is not None

    def describe(self) -> str:
        if self.regex:
            return f"the whole answer matches /{self.regex}/"
        if self.json_schema is not None:
            return "the answer is JSON that conforms to eval.format_json_schema"
        return "no format defined (set eval.format_regex or eval.format_json_schema)"

    def conforms(self, answer: str) -> bool | None:
        """True or False when a format is defined, None when none is."""
        text = answer.strip()
        if self.regex:
            return re.fullmatch(self.regex, text) is not None
        if self.json_schema is not None:
            import jsonschema

            try:
                value = json.loads(_strip_code_fence(text))
            except json.JSONDecodeError:
                return False
            return jsonschema.validators.validator_for(self.json_schema)(self.json_schema).is_valid(value)
        return None


def _strip_code_fence(text: str) -> str:
    match = re.fullmatch(r"```(?:json)?\s*\n(.*)\n```", text, re.DOTALL)
    return match.group(1) if match else text


def format_rule(format_regex: str, format_json_schema: str) -> FormatRule:
    """The configured format: a regex, or a JSON Schema given inline or as a .json file (ConfigError when unusable)."""
    from engine.config import parse_json_schema

    if format_regex:
        return FormatRule(regex=format_regex)
    if not format_json_schema:
        return FormatRule()
    text = format_json_schema
    if text.strip().endswith(".json"):
        path = Path(text.strip()).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"eval.format_json_schema: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
                              " — give an inline schema or a readable .json file") from None
    try:
        return FormatRule(json_schema=parse_json_schema(text))
    except ValueError as exc:
        raise ConfigError(f"eval.format_json_schema: {exc}") from None


def score_answer(prediction: str, reference: str | None, rule: FormatRule, answer_regex: str = "") -> dict[str, Any]:
    """Every metric of one answer: reference metrics (None without a reference) and format (None without a rule)."""
    conforms = rule.conforms(prediction)
    scores: dict[str, Any] = {"format": None if conforms is None else float(conforms)}
    if reference is None:
        scores.update({name: None for name in REFERENCE_METRICS})
        return scores
    exact, f1 = squad_scores(prediction, reference)
    scores.update(exact_match=exact, token_f1=f1, rouge_l=rouge_l(prediction, reference),
                  chrf=chrf(prediction, reference),
                  answer=float(answer_found(prediction, key_answer(reference, answer_regex))))
    return scores
