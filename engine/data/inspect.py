"""Dataset inspection: what training would see, and what is wrong with the data, before the first step.

`inspect_dataset` loads a file exactly as training does (same formats, same
chat template, same loss mask, same truncation) and adds findings: duplicates,
empty or suspicious answers, unfilled placeholders, leftover HTML, mixed
scripts, answers that never learn to stop, varying system prompts, role-order
errors. Every finding carries a severity, a count, example record numbers and
what to do.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.data.readers import (Conversation, LoadedDataset, load_dataset_file, to_conversations, training_split,
                                 turn_text)
from engine.data.tokenize import IGNORE_INDEX, TokenizedSample, tokenize_conversations
from engine.errors import DataError

EXAMPLES = 8
SEVERITIES = ("error", "warning", "info")
PLACEHOLDER = re.compile(r"\{\{\s*[^{}\n]{1,40}?\s*\}\}|\[\[\s*[A-Z_ ]{2,30}\s*\]\]|<\s*(?:INSERT|PLACEHOLDER)[^>]{0,30}>",
                         re.IGNORECASE)
HTML_JUNK = re.compile(r"</?(?:div|span|p|br|a|img|table|tr|td|th|ul|li|html|body|script|style|font|b|i)\b[^>]*>"
                       r"|&(?:nbsp|amp|lt|gt|quot|#\d{2,5});", re.IGNORECASE)
ASKS_FOR_MARKUP = re.compile(r"\bhtml\b|\bmarkup\b|\bweb ?page\b|\bwebsite\b|\bxml\b", re.IGNORECASE)
CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]+`", re.S)  # fenced blocks (closed or cut off) and inline code
ENDS_CLEANLY = re.compile(r"""[.!?。！？…:;)\]}"'`*>\-]\s*$|```\s*$|\d\s*$""")


@dataclass
class Finding:
    """One problem (or notable fact) about the data."""

    code: str
    severity: str
    title: str
    count: int
    rows: list[int]  # every affected record number (1-based, as in error messages)
    advice: str
    repeats: dict[int, int] = field(default_factory=dict)  # duplicates: row -> the earlier record it repeats

    def examples(self, limit: int = EXAMPLES) -> str:
        shown = ", ".join(f"{row} (= {self.repeats[row]})" if row in self.repeats else str(row)
                          for row in self.rows[:limit])
        return shown + (f", … (+{len(self.rows) - limit})" if len(self.rows) > limit else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InspectReport:
    """Everything `loradeck inspect` prints, as data (`to_dict` for --json and the TUI)."""

    path: str
    model: str
    format: str
    format_reason: str
    rows: int
    train_rows: int
    eval_rows: int
    max_length: int
    lengths: list[int] = field(default_factory=list)  # full token length per sample, in record order
    record_numbers: list[int] = field(default_factory=list)
    trained_per_sample: list[int] = field(default_factory=list)
    tokens_trained: int = 0
    tokens_masked: int = 0
    truncated_rows: list[int] = field(default_factory=list)
    untrained_rows: list[int] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    train_on: str = "completions"
    preference: dict[str, Any] | None = None  # preference data: pairs, identical pairs, length bias (DPO's view)
    conversations: list = field(default_factory=list, repr=False)  # for the sample browser; not in to_dict

    def percentiles(self) -> dict[str, int]:
        """Token-length percentiles after the chat template."""
        if not self.lengths:
            return {}
        ordered = sorted(self.lengths)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
        return {"min": ordered[0], "p50": pick(0.5), "p90": pick(0.9), "p95": pick(0.95), "p99": pick(0.99),
                "max": ordered[-1]}

    def histogram_top(self) -> int:
        """Where the histogram ends: the 99th percentile or max_length, whichever is longer, so the cut is always
        on the chart and one huge row cannot squeeze every other into the first bar."""
        return max(self.percentiles().get("p99", 0), self.max_length) if self.lengths else self.max_length

    def histogram(self, bins: int = 16) -> list[tuple[int, int, int]]:
        """(low, high, count) buckets over 0..`histogram_top`; longer rows are `outliers`, counted apart."""
        if not self.lengths:
            return []
        top = self.histogram_top()
        width = max(1, -(-top // bins))
        counts = Counter(min(length // width, bins - 1) for length in self.lengths if length <= top)
        return [(i * width, (i + 1) * width, counts.get(i, 0)) for i in range(bins)]

    def outliers(self) -> tuple[int, int]:
        """(how many rows are longer than the histogram shows, the longest)."""
        top = self.histogram_top()
        longer = [length for length in self.lengths if length > top]
        return len(longer), max(longer, default=0)

    def worst(self) -> str:
        """The most severe finding level present ("ok" when none)."""
        for severity in SEVERITIES[:2]:
            if any(f.severity == severity for f in self.findings):
                return severity
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(dataclasses.replace(self, conversations=[]))
        del data["conversations"]
        data["findings"] = [f.to_dict() for f in self.findings]
        data["percentiles"] = self.percentiles()
        data["histogram"] = self.histogram()
        data["histogram_outliers"], data["longest"] = self.outliers()
        data["verdict"] = self.worst()
        return data


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


ASCII_LETTER = re.compile(r"[A-Za-z]")
NON_ASCII_LETTER = re.compile(r"[^\W\d_A-Za-z]")  # letters outside ASCII


def _script(text: str) -> str | None:
    """The dominant writing system of a text (Latin, CJK, Cyrillic, …), None when it has no letters."""
    sample = text[:2000]
    if sample.isascii():  # the common case, decided at C speed
        return "Latin" if ASCII_LETTER.search(sample) else None
    counts: Counter = Counter()
    latin = len(ASCII_LETTER.findall(sample))
    if latin:
        counts["Latin"] = latin
    for char in NON_ASCII_LETTER.findall(sample)[:400]:  # enough to know the script; unicodedata.name is slow
        name = unicodedata.name(char, "")
        if name.startswith(("CJK", "HIRAGANA", "KATAKANA")):
            counts["CJK"] += 1
        elif name.startswith("HANGUL"):
            counts["Hangul"] += 1
        elif name.startswith("LATIN"):
            counts["Latin"] += 1
        else:
            counts[name.split(" ")[0].title() if name else "Other"] += 1
    return counts.most_common(1)[0][0] if counts else None


def _answers(conversation: Conversation) -> list[str]:
    if conversation.messages is None:
        return [conversation.text or ""]
    return [turn_text(m) for m in conversation.messages if m["role"] == "assistant"]


def _prompt(conversation: Conversation) -> str:
    if conversation.messages is None:
        return ""
    return "\n".join(m["content"] for m in conversation.messages if m["role"] in ("user", "system"))


def _all_text(conversation: Conversation) -> str:
    if conversation.messages is None:
        return conversation.text or ""
    return "\n".join(turn_text(m) for m in conversation.messages)


class _Collector:
    def __init__(self):
        self.rows: dict[str, list[int]] = defaultdict(list)
        self.repeats: dict[str, dict[int, int]] = defaultdict(dict)

    def add(self, code: str, row: int, repeats: int | None = None) -> None:
        self.rows[code].append(row)
        if repeats is not None:
            self.repeats[code][row] = repeats


FINDING_TEXT = {
    # code: (severity, title, advice)
    "untrained": ("error", "samples with no trained token",
                  "the loss mask hides every token (answer empty or cut off by max_length): raise data.max_length "
                  "or fix the rows; training skips them"),
    "empty_answer": ("error", "empty answers", "remove the rows or fill in the answers (`--fix` removes them)"),
    "role_order": ("error", "role-order errors",
                   "a conversation must start with user (after an optional system turn) and alternate; fix the turns"),
    "no_eos": ("error", "answers that never train the end-of-turn token",
               "the chat template leaves the stop token outside the trained span: the model will not learn to stop"),
    "truncated": ("warning", "samples longer than max_length (truncated)",
                  "raise data.max_length (memory grows with it) or shorten these rows"),
    "duplicate": ("warning", "exact duplicate samples",
                  "duplicates over-weight a few answers and cause parroting; `--fix` keeps the first copy"),
    "near_duplicate": ("warning", "near-duplicates (same text after case/punctuation/space normalization)",
                       "review them; they weigh like duplicates"),
    "duplicate_answer": ("warning", "the same answer to different prompts",
                         "a canned answer teaches the model to repeat it; vary or remove them"),
    "placeholder": ("warning", "unfilled template placeholders",
                    "replace placeholders such as {{name}} with real values before training (not guessed by --fix)"),
    "html": ("warning", "leftover HTML tags or entities", "strip markup the model should not learn to emit"),
    "short_answer": ("info", "very short answers (2 characters or fewer)",
                     "fine for classification data; otherwise check these rows"),
    "long_answer": ("info", "answers far longer than the rest (> 10x the median, > 2000 characters)",
                    "check for pasted documents or concatenated rows"),
    "mid_sentence": ("info", "answers that end mid-sentence", "often a sign of cut-off scraping; check these rows"),
    "trailing_user": ("warning", "conversations that end with a user turn",
                      "the last user turn has no answer to train on; drop it or add the answer"),
    "mixed_script": ("info", "samples in a different writing system from the rest",
                     "fine for a multilingual set; otherwise these rows may be noise"),
    "system_varies": ("info", "the system prompt varies between samples",
                      "intended? the model learns each variant; missing system prompts count as one variant"),
    "identical_pair": ("warning", "preference pairs whose chosen and rejected replies are the same",
                       "DPO learns nothing from them (and SFT repeats them): remove them"),
    "unpaired": ("error", "preference rows DPO cannot read",
                 "train.method=dpo needs a prompt, a chosen and a rejected reply in every row; fix or remove them"),
}


def _check_conversation(number: int, conversation: Conversation, text: str, found: _Collector) -> None:
    if conversation.messages is None:
        return
    roles = [m["role"] for m in conversation.messages]
    body = [r for r in roles if r != "system"]
    # Tool results sit between two assistant turns (call, then answer); only user/assistant must alternate.
    if "system" in roles[1:] or (body and body[0] != "user") \
            or any(a == b and a in ("user", "assistant") for a, b in zip(body, body[1:])):
        found.add("role_order", number)
    elif body and body[-1] == "user":
        found.add("trailing_user", number)
    answers = _answers(conversation)
    if any(not answer.strip() for answer in answers):
        found.add("empty_answer", number)
    elif any(len(answer.strip()) <= 2 for answer in answers):
        found.add("short_answer", number)
    last = answers[-1].strip() if answers else ""
    if len(last) > 40 and not ENDS_CLEANLY.search(last) and last[-1].isalnum():
        found.add("mid_sentence", number)
    if PLACEHOLDER.search(text):
        found.add("placeholder", number)
    # markup inside code, or asked for by the prompt, is an answer about HTML, not leftover junk
    if HTML_JUNK.search(CODE.sub(" ", text)) and not ASKS_FOR_MARKUP.search(_prompt(conversation)):
        found.add("html", number)


def _duplicates(numbers: list[int], conversations: list[Conversation], texts: list[str], found: _Collector) -> None:
    exact: dict[str, int] = {}
    near: dict[str, int] = {}
    answer_prompts: dict[str, set[str]] = defaultdict(set)
    answer_rows: dict[str, list[int]] = defaultdict(list)
    for number, conversation, text in zip(numbers, conversations, texts):
        whole = json.dumps(conversation.messages, ensure_ascii=False, sort_keys=True) \
            if conversation.messages is not None else conversation.text or ""
        if whole in exact:
            found.add("duplicate", number, exact[whole])
            continue
        exact[whole] = number
        normalized = _normalize(text)
        if normalized and normalized in near:
            found.add("near_duplicate", number, near[normalized])
        near.setdefault(normalized, number)
        answers = _answers(conversation)
        if conversation.messages is not None and answers and len(answers[-1].split()) >= 3:
            key = _normalize(answers[-1])
            answer_prompts[key].add(_normalize(_prompt(conversation)))
            answer_rows[key].append(number)
    for key, prompts in answer_prompts.items():
        if len(prompts) > 1:
            for number in answer_rows[key]:
                found.add("duplicate_answer", number)


def _long_answers(numbers: list[int], conversations: list[Conversation], found: _Collector) -> None:
    lengths = [(number, max((len(a) for a in _answers(c)), default=0)) for number, c in zip(numbers, conversations)]
    if len(lengths) < 10:
        return
    median = statistics.median(length for _, length in lengths) or 1
    for number, length in lengths:
        if length > 2000 and length > 10 * median:
            found.add("long_answer", number)


def _scripts(numbers: list[int], texts: list[str], found: _Collector) -> str | None:
    scripts = {number: _script(text) for number, text in zip(numbers, texts)}
    counted = Counter(s for s in scripts.values() if s)
    if not counted:
        return None
    main, main_count = counted.most_common(1)[0]
    if main_count < 0.8 * sum(counted.values()):
        return None  # a genuinely multilingual set
    for number, script in scripts.items():
        if script and script != main:
            found.add("mixed_script", number)
    return main


def _system_prompts(numbers: list[int], conversations: list[Conversation], found: _Collector) -> int:
    prompts = {}
    for number, conversation in zip(numbers, conversations):
        if conversation.messages is None:
            return 0
        system = next((m["content"] for m in conversation.messages if m["role"] == "system"), None)
        prompts[number] = system
    variants = Counter(prompts.values())
    if len(variants) > 1:
        common = variants.most_common(1)[0][0]
        for number, system in prompts.items():
            if system != common:
                found.add("system_varies", number)
    return len(variants)


def _eos_check(tokenizer, samples: list[TokenizedSample], found: _Collector) -> None:
    stop_ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            stop_ids.add(token_id)
    for sample in samples:
        if sample.truncated:
            continue
        trained = [label for label in sample.labels if label != IGNORE_INDEX]
        # Templates often train a newline after the stop token; it must be among the last few.
        if trained and not stop_ids.intersection(trained[-3:]):
            found.add("no_eos", sample.record_number)


def inspect_dataset(path: str | Path, tokenizer=None, *, model_name: str, max_length: int = 1024,
                    data_format: str = "auto", eval_split: float = 0.1, seed: int = 42, system_prompt: str = "",
                    eval_path: str | Path = "", train_on: str = "completions",
                    progress: Callable[[str, float], None] | None = None,
                    load_tokenizer: Callable[[], Any] | None = None) -> InspectReport:
    """Load, render and tokenize a dataset as training would, and report its shape and problems.

    Raises DataError (one line: file, record, what to do) for unreadable files,
    exactly like training does. The train / held-out counts follow training's rule (`training_split`): with
    `eval_path` every row trains and that file's rows are held out. Without `tokenizer`, `load_tokenizer` is
    called once the files have been read, so a broken file is refused before a model's tokenizer loads.
    """
    say = progress or (lambda stage, fraction: None)
    started = time.monotonic()
    say("reading", 0.0)
    loaded: LoadedDataset = load_dataset_file(path, data_format)
    conversations = to_conversations(loaded, system_prompt)
    numbers = [c.source.number if c.source else i + 1 for i, c in enumerate(conversations)]
    train, held_out = training_split(conversations, eval_path=eval_path, data_format=data_format,
                                     system_prompt=system_prompt, eval_split=eval_split, seed=seed)
    if tokenizer is None:
        if load_tokenizer is None:
            raise TypeError("inspect_dataset needs a tokenizer or load_tokenizer")
        tokenizer = load_tokenizer()
    say("tokenizing", 0.1)
    samples: list[TokenizedSample] = []
    chunk = 2000
    mode = "all" if loaded.format == "text" else train_on
    for begin in range(0, len(conversations), chunk):
        samples += tokenize_conversations(tokenizer, conversations[begin:begin + chunk], max_length, mode)
        say("tokenizing", 0.1 + 0.7 * min(1.0, (begin + chunk) / max(1, len(conversations))))
    say("checking", 0.85)
    found = _Collector()
    texts = [_all_text(conversation) for conversation in conversations]  # three checks read every row's text
    for number, conversation, text in zip(numbers, conversations, texts):
        _check_conversation(number, conversation, text, found)
    _duplicates(numbers, conversations, texts, found)
    _long_answers(numbers, conversations, found)
    main_script = _scripts(numbers, texts, found)
    _system_prompts(numbers, conversations, found)
    if mode == "completions":
        _eos_check(tokenizer, samples, found)
    preference = _preference_view(loaded, system_prompt, tokenizer, found) if loaded.format == "preference" else None
    for sample in samples:
        if sample.truncated:
            found.add("truncated", sample.record_number)
        if sample.trained_tokens == 0:
            found.add("untrained", sample.record_number)
    report = InspectReport(
        path=str(path), model=model_name, format=loaded.format, format_reason=loaded.format_reason,
        rows=len(conversations), train_rows=len(train), eval_rows=len(held_out), max_length=max_length,
        lengths=[s.full_length for s in samples], record_numbers=[s.record_number for s in samples],
        trained_per_sample=[s.trained_tokens for s in samples],
        tokens_trained=sum(s.trained_tokens for s in samples),
        tokens_masked=sum(len(s.input_ids) - s.trained_tokens for s in samples),
        truncated_rows=found.rows.get("truncated", []), untrained_rows=found.rows.get("untrained", []),
        notes=list(loaded.notes), train_on=mode, preference=preference, conversations=conversations)
    if preference and preference.get("length_bias_note"):
        report.notes.append(preference["length_bias_note"])
    for code, (severity, title, advice) in FINDING_TEXT.items():
        rows = sorted(set(found.rows.get(code, [])))
        if rows:
            if code == "mixed_script":
                title = f"{title} (most are {main_script})"
            report.findings.append(Finding(code, severity, title, len(rows), rows, advice,
                                           dict(found.repeats[code])))
    report.findings.sort(key=lambda f: (SEVERITIES.index(f.severity), -f.count))
    report.seconds = round(time.monotonic() - started, 3)
    say("done", 1.0)
    return report


def _preference_view(loaded: LoadedDataset, system_prompt: str, tokenizer, found: _Collector) -> dict[str, Any]:
    """What DPO would see in preference data: how many rows pair up, identical pairs, and whether the chosen
    replies are systematically longer (DPO then learns length)."""
    from engine.data.preferences import identical_pairs, length_bias, length_bias_note, to_preference_pair

    pairs = []
    for record in loaded.records:
        try:
            pairs.append(to_preference_pair(record, loaded.path, system_prompt))
        except DataError:
            found.add("unpaired", record.number)
    for index in identical_pairs(pairs):
        found.add("identical_pair", pairs[index].record.number)
    bias = length_bias(pairs, tokenizer) if pairs else None
    return {"pairs": len(pairs), "identical": len(found.rows.get("identical_pair", [])),
            "length_bias": bias, "length_bias_note": length_bias_note(bias, len(pairs))}


@dataclass
class Segment:
    """A run of rendered text that is trained, masked, or cut off by max_length."""

    text: str
    kind: str  # "trained", "masked" or "cut"


def mask_segments(tokenizer, conversation: Conversation, max_length: int, train_on: str = "completions") -> list[Segment]:
    """The sample as the model sees it, split into trained / masked / cut-off text, using training's own mask."""
    from engine.data.tokenize import render

    text, _ = render(tokenizer, conversation)
    sample = tokenize_conversations(tokenizer, [conversation], max_length, train_on)[0]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    segments: list[Segment] = []
    position = 0
    for index, (start, end) in enumerate(offsets):
        if index >= len(sample.labels):
            kind = "cut"
        else:
            kind = "trained" if sample.labels[index] != IGNORE_INDEX else "masked"
        piece = text[position:end] if end > position else ""
        position = max(position, end)
        if not piece:
            continue
        if segments and segments[-1].kind == kind:
            segments[-1].text += piece
        else:
            segments.append(Segment(piece, kind))
    if position < len(text):
        segments.append(Segment(text[position:], "cut" if len(offsets) > len(sample.labels) else "masked"))
    return segments


def write_fixed_copy(path: str | Path, report: InspectReport, out: str | Path, data_format: str = "auto") -> list[str]:
    """Write the dataset minus exact duplicates, empty answers and untrainable rows to `out` (.jsonl or .json).

    Returns one line per kind of removal. The original file is never touched;
    placeholders and other findings are reported, not rewritten.
    """
    out = Path(out)
    if out.resolve() == Path(path).resolve():
        raise DataError(f"{out}: --fix must write a new file, not the original")
    if out.suffix not in (".jsonl", ".json"):
        raise DataError(f"{out}: --fix writes .jsonl or .json — pick one of those extensions")
    by_code = {f.code: set(f.rows) for f in report.findings}
    removals = {code: by_code.get(code, set()) for code in ("duplicate", "empty_answer", "untrained")}
    dropped = set().union(*removals.values())
    loaded = load_dataset_file(path, data_format)
    kept = [record.data for record in loaded.records if record.number not in dropped]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        if out.suffix == ".jsonl":
            for row in kept:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            json.dump(kept, handle, ensure_ascii=False, indent=1)
    tmp.replace(out)
    lines = [f"removed {len(rows)} {FINDING_TEXT[code][1]}" for code, rows in removals.items() if rows]
    lines.append(f"wrote {len(kept)} of {len(loaded.records)} rows to {out}")
    return lines

