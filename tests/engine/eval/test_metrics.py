"""Answer metrics against hand-computed values, the format rules, and the paired 'is it real?' rule."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.eval.metrics import (FormatRule, answer_found, chrf, format_rule, key_answer, normalize_answer, rouge_l,
                                 score_answer, squad_scores)
from engine.eval.paired import bootstrap_interval, compare_paired


def test_exact_match_and_token_f1_normalize_case_punctuation_and_articles():
    assert squad_scores("The Modern!", "modern") == (1.0, 1.0)
    # prediction words {answer, modern, now}, reference {answer, modern}: P 2/3, R 1 → F1 0.8
    exact, f1 = squad_scores("ANSWER: modern now", "ANSWER: modern")
    assert exact == 0.0 and f1 == pytest.approx(0.8)
    assert squad_scores("Lima", "Brasília") == (0.0, 0.0)
    assert normalize_answer("  The  Capital, of Peru. ") == "capital of peru"


def test_rouge_l_is_the_longest_common_word_subsequence_in_any_script():
    # LCS "the cat sat" = 3 words: precision 3/3, recall 3/6 → F 2·1·0.5/1.5
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("Brasília é a capital", "Brasília é a capital") == pytest.approx(1.0)
    assert rouge_l("東京 です", "東京 です") == pytest.approx(1.0), "non-Latin words are words too"
    assert rouge_l("Lima", "Brasília") == 0.0


def test_chrf_averages_character_ngram_precision_and_recall():
    assert chrf("modern", "modern") == pytest.approx(1.0)
    # 'abc' vs 'abd': unigrams 2/3, bigrams 1/2, trigrams 0 (P = R) → mean (2/3 + 1/2 + 0) / 3
    assert chrf("abc", "abd") == pytest.approx((2 / 3 + 1 / 2 + 0) / 3, abs=1e-4)
    assert chrf("xyz", "abc") == 0.0


def test_answer_found_needs_whole_words_and_key_answer_takes_the_first_group():
    reference = "ANSWER: modern\nREASON: 'modern' means the reverse of 'ancient'."
    assert key_answer(reference, r"ANSWER: (.+)") == "modern"
    assert key_answer(reference, "") == reference.strip()
    assert key_answer("no marker here", r"ANSWER: (.+)") == "no marker here", "no match: the whole reference"
    assert answer_found("The opposite of 'ancient' is 'Modern'.", "modern")
    assert not answer_found("modernity is new", "modern")
    assert answer_found("It is Brasília, of course", "Brasília")
    assert not answer_found("anything", "")


def test_format_regex_must_match_the_whole_answer():
    rule = FormatRule(regex=r"ANSWER: .+\nREASON: .+")
    assert rule.conforms("ANSWER: Lima\nREASON: the seat of government")
    assert rule.conforms("  ANSWER: Lima\nREASON: x  \n"), "surrounding whitespace is not the model's format"
    assert not rule.conforms("ANSWER: Lima")
    assert not rule.conforms("ANSWER: Lima\nREASON: x\nand then some chatter")
    assert not rule.conforms("The capital of Peru is Lima.")
    assert FormatRule().conforms("anything") is None


def test_format_json_schema_inline_or_file_and_bad_schemas_are_refused(tmp_path):
    rule = format_rule("", '{"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}')
    assert rule.conforms('{"answer": "Lima"}')
    assert rule.conforms('```json\n{"answer": "Lima"}\n```'), "a fenced block is still JSON"
    assert not rule.conforms('{"answer": 3}')
    assert not rule.conforms("Lima")
    schema_file = tmp_path / "schema.json"
    schema_file.write_text('{"type": "array"}')
    assert format_rule("", str(schema_file)).conforms("[1, 2]")
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        format_rule("", '{"type": "no-such-type"}')
    with pytest.raises(ConfigError, match="cannot read"):
        format_rule("", str(tmp_path / "missing.json"))


def test_config_refuses_a_broken_regex_or_schema_in_one_line():
    from engine.config import load_config

    with pytest.raises(ConfigError, match=r"eval.format_regex: '\(' is not a valid regular expression"):
        load_config(None, ["eval.format_regex=("])
    with pytest.raises(ConfigError, match="eval.format_json_schema: not JSON"):
        load_config(None, ["eval.format_json_schema={oops"])
    assert load_config(None, ["eval.answer_regex=ANSWER: (.+)"]).eval.answer_regex == "ANSWER: (.+)"


def test_score_answer_without_a_reference_keeps_only_format():
    scores = score_answer("ANSWER: x\nREASON: y", None, FormatRule(regex=r"ANSWER: .+\nREASON: .+"))
    assert scores["format"] == 1.0 and scores["exact_match"] is None and scores["chrf"] is None
    scored = score_answer("ANSWER: Lima\nREASON: capital", "ANSWER: Lima\nREASON: capital", FormatRule(),
                          r"ANSWER: (.+)")
    assert scored["format"] is None and scored["exact_match"] == 1.0 and scored["answer"] == 1.0


def test_a_tie_heavy_set_says_no_clear_difference():
    # two wins, no losses, 22 ties: the mean is up, but a resample without the two wins is common
    comparison = compare_paired("answer", "tuned", "base", [1, 1] + [0] * 22, [0] * 24)
    assert (comparison.wins, comparison.losses, comparison.ties) == (2, 0, 22)
    assert comparison.interval[0] <= 0 < comparison.interval[1]
    assert comparison.direction == "unclear" and "no clear difference" in comparison.verdict()


def test_clear_wins_and_a_falling_loss_are_called_better():
    comparison = compare_paired("format", "tuned", "base", [1] * 20 + [0] * 4, [0] * 24)
    assert comparison.direction == "better" and comparison.interval[0] > 0
    loss = compare_paired("heldout_loss", "tuned", "base", [1.0 + i / 100 for i in range(10)], [2.0] * 10,
                          lower_is_better=True)
    assert (loss.wins, loss.losses) == (10, 0) and loss.direction == "better" and loss.mean_delta < 0
    worse = compare_paired("answer", "tuned", "base", [0] * 12, [1] * 12)
    assert worse.direction == "worse" and worse.losses == 12


def test_too_few_prompts_settle_nothing_and_missing_scores_are_not_pairs():
    comparison = compare_paired("answer", "tuned", "base", [1, 1, 1, None], [0, 0, 0, 0])
    assert comparison.pairs == 3 and comparison.interval is None and "too few prompts" in comparison.verdict()


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    deltas = [0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4]
    low, high = bootstrap_interval(deltas)
    assert (low, high) == bootstrap_interval(deltas)
    assert low < sum(deltas) / len(deltas) < high
    assert bootstrap_interval([0.25] * 6) == pytest.approx((0.25, 0.25))
