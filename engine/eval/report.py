"""The before/after report: base and adapters on the same held-out prompts, same greedy settings, one base copy.

`plan_eval` checks everything a report needs (run, adapters, prompts, format
rule) before any weights load; `evaluate` loads the base once with every
adapter beside it, measures held-out loss (one batched teacher-forced pass per
model, training's own loss mask), generates every model's answer in batches
that mix prompts and adapters (left padding), scores the answers, compares
each adapter with the base prompt by prompt, and adds the blind A/B tally when
the run has ratings; `write_report` puts `report.md`, `report.json` and
`answers.jsonl` into `RUN/eval/<time>/`, whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from engine.data.prompts import question_of
from engine.errors import ConfigError, DataError, ModelError
from engine.eval.metrics import (LOWER_IS_BETTER, METRIC_NAMES, REFERENCE_METRICS, FormatRule, format_rule,
                                 score_answer, warm_metric_imports)
from engine.eval.paired import compare_paired, short_verdict

REPORT_FORMAT = "loradeck-eval/1"
REPORT_FILE, REPORT_JSON, ANSWERS_FILE = "report.md", "report.json", "answers.jsonl"
COMPARED_METRICS = ("heldout_loss", "answer", "format", "exact_match", "token_f1", "rouge_l", "chrf")
LOSS_BATCH_TOKENS = 8192  # padded tokens per teacher-forced batch
OVERLAP_CAVEAT = ("Exact match, token F1, ROUGE-L and chrF measure how closely answers resemble the reference "
                  "answers, not how good they are: a fine-tune can score higher and still be preferred less. The "
                  "blind A/B tally (`loradeck chat --blind`) is the quality signal.")
Progress = Callable[[float, str], None]


class EvalOutOfTime(InterruptedError):
    """The report would not finish before the deadline it was given."""


@dataclass
class EvalItem:
    """One held-out prompt: the conversation up to its answer, the reference answer, and the whole conversation
    (for held-out loss) when there is a reference."""

    prompt: Any  # engine.data.prompts.PromptItem
    conversation: Any | None  # engine.data.readers.Conversation


@dataclass
class EvalPlan:
    """Everything a report needs, checked before any weights load."""

    run_dir: Path
    base: str
    load_in_4bit: bool
    adapters: list[Path]
    steps: list[int | None]  # the training step each adapter was saved at
    items: list[EvalItem]
    source: str
    rule: FormatRule
    answer_regex: str
    max_new_tokens: int
    batch_size: int
    max_length: int
    train_on: str
    checkpoints: bool
    primary: int = 1  # the first `primary` adapters were asked for; the rest are the run's checkpoints
    notes: list[str] = field(default_factory=list)


def _adapter_step(folder: Path) -> int | None:
    from engine.run.paths import STATE_FILE

    match = re.fullmatch(r"step-(\d+)", folder.name)
    if match:
        return int(match.group(1))
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _eval_items(conversations: list, source: str) -> list[EvalItem]:
    """Each conversation's prompt, with the conversation kept for held-out loss when it has a reference answer."""
    from engine.data.prompts import prompt_item

    items = []
    for conversation in conversations:
        prompt = prompt_item(conversation, source)
        if prompt is not None:
            items.append(EvalItem(prompt, conversation if prompt.reference is not None else None))
    return items


def _items_from_file(path: Path, system_prompt: str) -> list[EvalItem]:
    """A dataset file's rows (their answers are the references), else prompts without references."""
    from engine.data.prompts import prompts_from_file
    from engine.data.readers import load_dataset_file, to_conversations

    if path.suffix.lower() not in (".txt", ".md", ""):
        try:
            loaded = load_dataset_file(path)
        except DataError:
            loaded = None
        if loaded is not None and loaded.format != "text":
            return _eval_items(to_conversations(loaded, system_prompt), str(path))
    return [EvalItem(prompt, None) for prompt in prompts_from_file(path, system_prompt=system_prompt)]


def plan_eval(run_dir: str | Path, *, adapters: list[str | Path] = (), prompts: str | Path | None = None,
              limit: int | None = None, max_new_tokens: int | None = None, batch_size: int | None = None,
              checkpoints: bool = False, base: str | None = None) -> EvalPlan:
    """Check a report's inputs: the run (its config and `[eval]` section), the adapters (default: the run's own),
    the prompts (default: the run's held-out data) and the settings. Raises a one-line LoradeckError."""
    from engine.config import load_config
    from engine.data.prompts import held_out_conversations
    from engine.models.adapters import resolve_adapter
    from engine.run.paths import complete_checkpoints, require_run_dir

    paths = require_run_dir(run_dir)
    if not paths.config.is_file():
        raise ConfigError(f"{run_dir}: no config.toml — evaluate a run directory made by `loradeck train`")
    config = load_config(paths.config)
    section = config.eval
    limit = section.limit if limit is None else limit
    if limit is not None and limit < 0:
        raise ConfigError(f"eval: --limit must be 0 (all) or more, not {limit}")
    max_new_tokens = section.max_new_tokens if max_new_tokens is None else max_new_tokens
    if not 1 <= max_new_tokens <= 8192:
        raise ConfigError(f"eval: --max-new-tokens must be 1–8192, not {max_new_tokens}")
    batch_size = section.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ConfigError(f"eval: --batch-size must be at least 1, not {batch_size}")

    if adapters:
        asked = [resolve_adapter(adapter).resolve() for adapter in adapters]
    else:
        try:
            asked = [resolve_adapter(paths.root).resolve()]
        except ModelError:
            raise ModelError(f"{run_dir}: no adapter yet (no adapter/, handoff/ or complete checkpoint) — evaluate "
                             "once the run has saved, or pass --adapter") from None
    folders = list(dict.fromkeys(asked))
    steps = [_adapter_step(folder) for folder in folders]
    primary = len(folders)
    if checkpoints:
        for checkpoint in complete_checkpoints(paths.checkpoints):
            step = _adapter_step(checkpoint)
            # the checkpoint the final adapter was saved from is the same weights: evaluated once
            if (checkpoint / "adapter_config.json").is_file() and checkpoint.resolve() not in folders \
                    and step not in steps[:primary]:
                folders.append(checkpoint.resolve())
                steps.append(step)
    model_name, run_4bit = (base, False) if base else (config.model.name, config.model.load_in_4bit)

    source_path = Path(prompts).expanduser() if prompts is not None else paths.root
    if source_path.is_dir():  # a run directory: its held-out rows
        conversations, source = held_out_conversations(source_path)
        items = _eval_items(conversations, source)
    else:
        source = str(source_path)
        items = _items_from_file(source_path, config.data.system_prompt)
    if limit:
        items = items[:limit]
    if not items:
        raise DataError(f"{source}: no prompts to evaluate — the held-out set is empty")
    rule = format_rule(section.format_regex, section.format_json_schema)
    return EvalPlan(paths.root, model_name, run_4bit, folders, steps, items, source, rule, section.answer_regex,
                    max_new_tokens, batch_size, config.data.max_length, config.data.train_on, checkpoints,
                    primary=primary)


# ---------------------------------------------------------------- held-out loss

def _loss_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Row indexes grouped longest first, each group's padded size within `batch_tokens` (one row at least)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def row_losses(model, samples: list, pad_token_id: int, *, batch_tokens: int = LOSS_BATCH_TOKENS,
               on_batch: Callable[[], None] | None = None, should_stop: Callable[[], bool] | None = None
               ) -> list[tuple[float, int]]:
    """Teacher-forced next-token loss of each sample with the model as it is now (active adapter): per row, the
    summed cross-entropy over its trained tokens and their count. Logits exist one chunk at a time."""
    import torch
    import torch.nn.functional as functional

    from engine.data.tokenize import IGNORE_INDEX
    from engine.models.parts import LOGITS_CHUNK_TOKENS, chunked_loss_parts

    parts = chunked_loss_parts(model)
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(samples)
    for batch in _loss_batches([len(s.input_ids) for s in samples], batch_tokens):
        if should_stop is not None and should_stop():
            raise InterruptedError("evaluation stopped")
        width = max(len(samples[i].input_ids) for i in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            sample = samples[index]
            ids[row, :len(sample.input_ids)] = torch.tensor(sample.input_ids)
            labels[row, :len(sample.labels)] = torch.tensor(sample.labels)
            mask[row, :len(sample.input_ids)] = 1
        ids, mask = ids.to(device), mask.to(device)
        targets = functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].to(device)
        trained = targets != IGNORE_INDEX
        with torch.inference_mode():
            if parts is not None:
                decoder, head = parts
                hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[trained]
                wanted = targets[trained]
                losses = torch.cat([functional.cross_entropy(head(hidden[s:s + LOGITS_CHUNK_TOKENS]).float(),
                                                             wanted[s:s + LOGITS_CHUNK_TOKENS], reduction="none")
                                    for s in range(0, wanted.shape[0], LOGITS_CHUNK_TOKENS)]) \
                    if wanted.numel() else torch.zeros(0, device=device)
            else:
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                losses = functional.cross_entropy(logits[trained].float(), targets[trained], reduction="none")
            rows = torch.arange(len(batch), device=device)[:, None].expand_as(trained)[trained]
            sums = torch.zeros(len(batch), device=device, dtype=torch.float32).index_add_(0, rows, losses.float())
            counts = trained.sum(dim=1)
        for row, index in enumerate(batch):
            results[index] = (float(sums[row]), int(counts[row]))
        if on_batch is not None:
            on_batch()
    return results


# ---------------------------------------------------------------- the report

def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def evaluate(plan: EvalPlan, *, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
             deadline: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the report: (report, per-prompt answers), loading the base once with every adapter of the plan beside
    it. `should_stop` is polled between batches (and every generated token): InterruptedError when it says stop.
    With a `deadline` (epoch seconds), EvalOutOfTime as soon as the answers measured so far say the rest would not
    finish by then."""
    from engine.config import format_duration

    if deadline is not None:
        asked = should_stop

        def should_stop() -> bool:
            if time.time() > deadline:
                raise EvalOutOfTime("the deadline came before the report was done")
            return asked is not None and asked()

    from engine.chat.generation import BASE_LABEL, ChatModels, GenerationSettings, Pane
    from engine.chat.rating import RatingLog, tally
    from engine.data.tokenize import tokenize_conversations
    from engine.library_output import leave_bitsandbytes_unimported
    from engine.run.paths import RunPaths

    say = progress or (lambda fraction, message: None)
    started = time.monotonic()
    # The metric libraries take seconds to import (torchmetrics pulls in much of its package): do it while the
    # weights load, not after the answers.
    import threading

    threading.Thread(target=warm_metric_imports, daemon=True).start()
    say(0.0, f"loading {plan.base} and {len(plan.adapters)} adapter{'s' if len(plan.adapters) != 1 else ''}")
    leave_bitsandbytes_unimported(plan.load_in_4bit)
    models = ChatModels(plan.base, plan.adapters, load_in_4bit=plan.load_in_4bit)
    loaded_at = time.monotonic()
    labels = list(models.labels)  # the base, then one per adapter in the plan's order
    tokenizer, model = models.tokenizer, models.model
    notes = list(plan.notes)

    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    items = plan.items
    prompt_lengths = [len(tokenizer.apply_chat_template(item.prompt.messages, add_generation_prompt=True))
                      for item in items]
    if isinstance(context, int):
        kept = [i for i, length in enumerate(prompt_lengths) if length + plan.max_new_tokens <= context]
        if len(kept) < len(items):
            notes.append(f"{len(items) - len(kept)} prompts are too long for the model's context of {context:,} "
                         f"tokens with {plan.max_new_tokens} new tokens and were left out")
            items = [items[i] for i in kept]
            prompt_lengths = [prompt_lengths[i] for i in kept]
    if not items:
        raise DataError("no prompt fits the model's context with the requested new tokens — lower --max-new-tokens")

    with_reference = [i for i, item in enumerate(items) if item.conversation is not None]
    samples = tokenize_conversations(tokenizer, [items[i].conversation for i in with_reference], plan.max_length,
                                     plan.train_on)
    scored_rows = [(i, s) for i, s in zip(with_reference, samples) if s.trained_tokens > 0]
    loss_batches = len(_loss_batches([len(s.input_ids) for _, s in scored_rows], LOSS_BATCH_TOKENS))
    rows = [(index, label) for index in sorted(range(len(items)), key=lambda i: -prompt_lengths[i])
            for label in labels]
    total_units = loss_batches * len(labels) + len(rows)
    done = [0]

    def advance(units: int, message: str) -> None:
        done[0] += units
        say(done[0] / max(total_units, 1), message)

    # Held-out loss, one teacher-forced pass per model.
    losses: dict[str, list[float | None]] = {label: [None] * len(items) for label in labels}
    totals: dict[str, tuple[float, int]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for label in labels:
        if not scored_rows:
            break
        say(done[0] / max(total_units, 1), f"held-out loss: {label}")
        adapted = label != BASE_LABEL
        if adapted:
            model.set_adapter(label)
        with model.disable_adapter() if not adapted and models.adapter_paths else contextlib.nullcontext():
            per_row = row_losses(model, [s for _, s in scored_rows], pad,
                                 on_batch=lambda: advance(1, f"held-out loss: {label}"), should_stop=should_stop)
        for (index, _), (total, count) in zip(scored_rows, per_row):
            losses[label][index] = total / count if count else None
        totals[label] = (sum(t for t, _ in per_row), sum(c for _, c in per_row))
    loss_done_at = time.monotonic()

    # Every model's answer to every prompt, prompts and adapters mixed in each batched call.
    settings = GenerationSettings(max_new_tokens=plan.max_new_tokens, temperature=0.0)
    answers: dict[tuple[int, str], Any] = {}
    new_tokens = 0
    generation_started = time.monotonic()
    # Equal batches (48 rows at 32 a batch: 24 + 24, not 32 + 16): every row of a batch waits for its longest answer.
    per_batch = math.ceil(len(rows) / math.ceil(len(rows) / plan.batch_size))
    for start in range(0, len(rows), per_batch):
        if should_stop is not None and should_stop():
            raise InterruptedError("evaluation stopped")
        batch = rows[start:start + per_batch]
        result = models.answer([Pane(label, items[index].prompt.messages) for index, label in batch], settings,
                               should_stop=should_stop)
        if any(answer.stopped_by == "cancelled" for answer in result.answers):
            raise InterruptedError("evaluation stopped")
        for (index, label), answer in zip(batch, result.answers):
            answers[(index, label)] = answer
            new_tokens += answer.new_tokens
        advance(len(batch), f"answers {min(start + len(batch), len(rows))}/{len(rows)}")
        left = len(rows) - start - len(batch)
        if deadline is not None and left:
            needed = (time.monotonic() - generation_started) / (start + len(batch)) * left
            if time.time() + needed > deadline:
                raise EvalOutOfTime(f"the remaining {left} answers need about {format_duration(needed)}, "
                                    f"{format_duration(deadline - time.time())} is left")
    generated_at = time.monotonic()

    # Scores, per answer and per model.
    scores: dict[tuple[int, str], dict[str, Any]] = {}
    for (index, label), answer in answers.items():
        scores[(index, label)] = score_answer(answer.text, items[index].prompt.reference, plan.rule,
                                              plan.answer_regex)
        scores[(index, label)]["heldout_loss"] = losses[label][index]
    report_models: dict[str, Any] = {}
    for position, label in enumerate(labels):
        adapter = position - 1  # the base has none
        per_prompt = [scores[(i, label)] for i in range(len(items))]
        total, count = totals.get(label, (0.0, 0))
        loss = total / count if count else None
        report_models[label] = {
            "adapter": str(plan.adapters[adapter]) if adapter >= 0 else None,
            "step": plan.steps[adapter] if adapter >= 0 else None,
            "heldout_loss": loss, "perplexity": math.exp(min(loss, 700)) if loss is not None else None,
            "loss_tokens": count,
            "checkpoint": adapter >= plan.primary,
            "metrics": {name: _mean([s[name] for s in per_prompt]) for name in REFERENCE_METRICS + ("format",)},
            "answer_tokens": _mean([answers[(i, label)].new_tokens for i in range(len(items))]),
            "stopped_by_length": sum(1 for i in range(len(items)) if answers[(i, label)].stopped_by == "length"),
        }
    comparisons = []
    for label in labels[1:]:
        metrics = {}
        for name in COMPARED_METRICS:
            challenger = [scores[(i, label)][name] for i in range(len(items))]
            reference = [scores[(i, BASE_LABEL)][name] for i in range(len(items))]
            if any(v is not None for v in challenger):
                metrics[name] = compare_paired(name, label, BASE_LABEL, challenger, reference,
                                               lower_is_better=name in LOWER_IS_BETTER).to_dict()
        comparisons.append({"model": label, "against": BASE_LABEL, "metrics": metrics})

    ratings = RatingLog(RunPaths(plan.run_dir).chat).rows()
    blind = []
    for label in labels[1:]:
        counted = tally(ratings, label, BASE_LABEL)
        if counted.rated:
            blind.append(counted.to_dict())

    by_step = None
    if plan.checkpoints:
        by_step = sorted(
            ({"label": label, **{key: report_models[label][key] for key in ("step", "heldout_loss", "metrics")}}
             for label in labels[1:]),
            key=lambda row: (row["step"] is None, row["step"] or 0))
    best = None
    if by_step:
        with_loss = [row for row in by_step if row["heldout_loss"] is not None]
        if with_loss:
            best = min(with_loss, key=lambda row: row["heldout_loss"])["label"]
    scored_at = time.monotonic()
    if not with_reference:
        notes.append("these prompts have no reference answers: only format and answer length are measured")
    elapsed = time.monotonic() - started
    report = {
        "format": REPORT_FORMAT,
        "run": str(plan.run_dir),
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "base": plan.base,
        "source": plan.source,
        "prompts": len(items),
        "with_reference": len(with_reference),
        "settings": {"max_new_tokens": plan.max_new_tokens, "decoding": "greedy", "batch_size": plan.batch_size,
                     "max_length": plan.max_length, "train_on": plan.train_on},
        "format_rule": plan.rule.describe() if plan.rule.defined else None,
        "answer_regex": plan.answer_regex or None,
        "models": report_models,
        "comparisons": comparisons,
        "blind": blind,
        "checkpoints": by_step,
        "best_checkpoint": best,
        "notes": notes,
        "caveat": OVERLAP_CAVEAT,
        "seconds": {"load": round(loaded_at - started, 2), "loss": round(loss_done_at - loaded_at, 2),
                    "generate": round(generated_at - loss_done_at, 2),
                    "score": round(scored_at - generated_at, 2), "total": round(elapsed, 2)},
        "generated_tokens": new_tokens,
    }
    report["headline"] = headline(report)
    answer_rows = []
    for index, item in enumerate(items):
        answer_rows.append({
            "index": index, "source": item.prompt.source, "prompt": item.prompt.messages,
            "reference": item.prompt.reference,
            "answers": {label: {"text": answers[(index, label)].text, "new_tokens": answers[(index, label)].new_tokens,
                                "stopped_by": answers[(index, label)].stopped_by,
                                "scores": scores[(index, label)]}
                        for label in labels}})
    return report, answer_rows


# ---------------------------------------------------------------- files

def write_report(run_dir: str | Path, report: dict[str, Any], answers: list[dict[str, Any]]) -> Path:
    """Write `report.md`, `report.json` and `answers.jsonl` into a new `RUN/eval/<time>/`, renamed into place whole;
    returns the folder."""
    from engine.run.paths import RunPaths, private_files, staging_path

    root = RunPaths(Path(run_dir)).eval_reports
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = root / stamp, 2
    while folder.exists():
        folder, n = root / f"{stamp}-{n}", n + 1
    staging = staging_path(folder)
    with private_files():
        staging.mkdir(parents=True)
        report = dict(report, folder=str(folder))
        (staging / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (staging / REPORT_FILE).write_text(render_markdown(report, answers), encoding="utf-8")
        with open(staging / ANSWERS_FILE, "w", encoding="utf-8") as handle:
            for row in answers:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(staging, folder)
    return folder


def report_folders(run_dir: str | Path) -> list[Path]:
    """The run's complete report folders, oldest first."""
    from engine.run.paths import RunPaths

    root = RunPaths(Path(run_dir)).eval_reports
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / REPORT_JSON).is_file())


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


def report_problem(report: Any) -> str | None:
    """Why a report.json read from disk cannot be shown (a report from another version, or edited by hand), or
    None when it has every field the screens and the headline read."""
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        return f"not a {REPORT_FORMAT} report"
    for key, kind in (("models", dict), ("comparisons", list), ("settings", dict), ("headline", str),
                      ("source", str), ("created", str), ("caveat", str), ("prompts", int)):
        if not isinstance(report.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    if "base" not in report["models"]:
        return "no base model in 'models'"
    for label, model in report["models"].items():
        if not isinstance(model, dict) or not isinstance(model.get("metrics"), dict) \
                or not _is_number(model.get("heldout_loss")) or not all(map(_is_number, model["metrics"].values())):
            return f"model '{label}' is malformed"
    for comparison in report["comparisons"]:
        if not isinstance(comparison, dict) or comparison.get("model") not in report["models"] \
                or not isinstance(comparison.get("metrics"), dict):
            return "a comparison is malformed"
        for row in comparison["metrics"].values():
            if not isinstance(row, dict) or not all(isinstance(row.get(k), int) for k in ("wins", "losses", "ties",
                                                                                      "pairs")):
                return "a comparison is malformed"
    for key in ("blind", "checkpoints"):
        if report.get(key) is not None and not isinstance(report[key], list):
            return f"'{key}' is not a list"
    return None


def latest_report(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest readable, well-formed report of a run (older ones stand in for a damaged newest), or None."""
    for folder in reversed(report_folders(run_dir)):
        try:
            report = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if report_problem(report) is None:
            report["folder"] = str(folder)
            return report
    return None


def read_answers(folder: str | Path) -> list[dict[str, Any]]:
    """The per-prompt answers of a report folder (unreadable lines skipped)."""
    rows = []
    try:
        lines = (Path(folder) / ANSWERS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if _answer_row_ok(row):
            rows.append(row)
    return rows


def _answer_row_ok(row: Any) -> bool:
    """Whether an answers.jsonl row has the shape the Eval screen reads."""
    if not isinstance(row, dict) or not isinstance(row.get("index"), int) or not isinstance(row.get("prompt"), list):
        return False
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in row["prompt"]):
        return False
    if row.get("reference") is not None and not isinstance(row["reference"], str):
        return False
    answers = row.get("answers")
    return isinstance(answers, dict) and "base" in answers and all(
        isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("scores", {}), dict)
        for a in answers.values())


# ---------------------------------------------------------------- words and tables

def format_value(name: str, value: float | None) -> str:
    """A metric value for people: shares as percentages, the held-out loss with three decimals."""
    if value is None:
        return "—"
    if name in LOWER_IS_BETTER:
        return f"{value:.3f}"
    return f"{value:.0%}"


def format_delta(name: str, value: float | None) -> str:
    """A signed difference in the metric's own unit (points for shares)."""
    if value is None:
        return "—"
    if name in LOWER_IS_BETTER:
        return f"{value:+.3f}"
    return f"{value * 100:+.0f} pts"


def _interval_text(name: str, row: dict[str, Any]) -> str:
    if not row.get("interval"):
        return "—"
    low, high = row["interval"]
    return f"{format_delta(name, low)} … {format_delta(name, high)}"


def metric_value(model: dict[str, Any], name: str) -> float | None:
    """One model's figure for a compared metric from a report (held-out loss sits beside the answer metrics)."""
    return model.get("heldout_loss") if name == "heldout_loss" else model["metrics"].get(name)


def comparison_rows(report: dict[str, Any], label: str) -> list[list[str]]:
    """The before/after table of one adapter: metric, base, adapter, Δ, 95% interval, wins/losses/ties, verdict."""
    comparison = next((c for c in report["comparisons"] if c["model"] == label), None)
    if comparison is None:
        return []
    rows = []
    for name in COMPARED_METRICS:
        row = comparison["metrics"].get(name)
        if row is None:
            continue
        rows.append([METRIC_NAMES[name], format_value(name, metric_value(report["models"]["base"], name)),
                     format_value(name, metric_value(report["models"][label], name)),
                     format_delta(name, row["mean_delta"]), _interval_text(name, row),
                     f"{row['wins']}/{row['losses']}/{row['ties']}", short_verdict(row["direction"], row["pairs"])])
    return rows


TABLE_HEADER = ["metric", "base", "{label}", "Δ mean", "95% interval", "W/L/T", "verdict"]


def headline(report: dict[str, Any]) -> str:
    """One line for Home: the first adapter asked for against the base on format, correctness, loss and blind wins."""
    labels = [label for label in report["models"] if label != "base"]
    if not labels:
        return "base only"
    label = next((label for label in labels if not report["models"][label].get("checkpoint")), labels[0])
    base, mine = report["models"]["base"], report["models"][label]
    parts = []
    for name in ("format", "answer"):
        if base["metrics"].get(name) is not None and mine["metrics"].get(name) is not None:
            short = {"format": "format", "answer": "correct"}[name]
            parts.append(f"{short} {format_value(name, base['metrics'][name])}→"
                         f"{format_value(name, mine['metrics'][name])}")
    if base.get("heldout_loss") is not None and mine.get("heldout_loss") is not None:
        parts.append(f"loss {base['heldout_loss']:.2f}→{mine['heldout_loss']:.2f}")
    blind = next((row for row in report.get("blind") or [] if row["challenger"] == label), None)
    if blind:
        parts.append(f"blind {blind['wins']}–{blind['losses']}")
    return f"{label}: " + " · ".join(parts) if parts else f"{label}: {report['prompts']} prompts"


def _plain_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("─" * width for width in widths))
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return lines


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    escape = (lambda cell: str(cell).replace("|", "\\|"))
    return (["| " + " | ".join(escape(c) for c in header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows])


def _shown_comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The comparisons that get a whole table: the adapters asked for (checkpoints get a row each instead)."""
    return [c for c in report["comparisons"] if not report["models"][c["model"]].get("checkpoint")]


def _describe(report: dict[str, Any]) -> str:
    settings = report["settings"]
    return (f"{report['prompts']} held-out prompts from {report['source']} ({report['with_reference']} with "
            f"reference answers) · base {report['base']} · greedy, up to {settings['max_new_tokens']} new tokens")


def _blind_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for row in report.get("blind") or []:
        low, high = row["interval"]
        rate = f"{row['win_rate']:.0%} of {row['wins'] + row['losses']} decided (95% CI {low:.0%}–{high:.0%})" \
            if row["win_rate"] is not None else "no decided prompts"
        lines.append(f"{row['challenger']} wins {row['wins']} · base wins {row['losses']} · ties {row['ties']} · "
                     f"both bad {row['both_bad']} — {rate}: {row['verdict']}")
    return lines


def checkpoint_rows(report: dict[str, Any]) -> list[list[str]]:
    """The checkpoint table: step, adapter (the best held-out loss marked), loss, correctness, format, ROUGE-L."""
    rows = []
    for row in report.get("checkpoints") or []:
        mark = " ← best held-out loss" if row["label"] == report.get("best_checkpoint") else ""
        rows.append([str(row["step"]) if row["step"] is not None else "—", row["label"] + mark,
                     format_value("heldout_loss", row["heldout_loss"]),
                     format_value("answer", row["metrics"].get("answer")),
                     format_value("format", row["metrics"].get("format")),
                     format_value("rouge_l", row["metrics"].get("rouge_l"))])
    return rows


CHECKPOINT_HEADER = ["step", "adapter", "held-out loss", "correct", "format", "ROUGE-L"]


def render_terminal(report: dict[str, Any]) -> str:
    """The report as plain text for a terminal."""
    lines = [_describe(report)]
    if report.get("format_rule"):
        lines.append(f"format: {report['format_rule']}")
    for comparison in _shown_comparisons(report):
        label = comparison["model"]
        lines += ["", f"base vs {label}"]
        lines += _plain_table([h.format(label=label) for h in TABLE_HEADER], comparison_rows(report, label))
    if report.get("checkpoints"):
        lines += ["", "checkpoints"] + _plain_table(CHECKPOINT_HEADER, checkpoint_rows(report))
    lines += ["", "blind A/B rating (the quality signal):"]
    lines += _blind_lines(report) or ["no ratings yet — `loradeck chat --blind` rates answers without knowing "
                                      "which model wrote them"]
    lines += [""] + list(report.get("notes") or []) + [report["caveat"]]
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any], answers: list[dict[str, Any]], examples: int = 5) -> str:
    """`report.md`: the before/after tables a person pastes into a write-up, then a few answers side by side."""
    lines = [f"# Did it help? {Path(report['run']).name}", "", _describe(report) + ".", ""]
    if report.get("format_rule"):
        lines += [f"Format: {report['format_rule']}.", ""]
    if report.get("answer_regex"):
        lines += [f"Correct answer found: the reference's `{report['answer_regex']}` appears in the answer "
                  "(normalized words).", ""]
    for comparison in _shown_comparisons(report):
        label = comparison["model"]
        lines += [f"## base vs {label}", ""]
        lines += _markdown_table([h.format(label=label) for h in TABLE_HEADER], comparison_rows(report, label))
        lines.append("")
    lines += ["Δ is the adapter minus the base, averaged over prompts; the 95% interval comes from a paired "
              "bootstrap over prompts, and a difference is claimed only when it excludes 0. W/L/T counts the "
              "prompts where the adapter scored higher / lower / the same (for loss, lower wins).", ""]
    if report.get("checkpoints"):
        lines += ["## Checkpoints", ""] + _markdown_table(CHECKPOINT_HEADER, checkpoint_rows(report)) + [""]
    lines += ["## Blind A/B rating", ""]
    blind = _blind_lines(report)
    lines += (blind or ["No ratings yet: `loradeck chat --blind --prompts RUN --adapter RUN --compare` rates "
                        "answers without knowing which model wrote them."]) + [""]
    lines += [f"> {report['caveat']}", ""]
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    if answers:
        lines += ["## Answers", ""]
        for row in answers[:examples]:
            lines += [f"**{question_of(row['prompt'])}**", ""]
            if row.get("reference") is not None:
                lines += [f"- reference: {_one_line(row['reference'])}"]
            for label, answer in row["answers"].items():
                lines.append(f"- {label}: {_one_line(answer['text'])}")
            lines.append("")
        if len(answers) > examples:
            lines += [f"All {len(answers)} prompts with every answer and its scores: `answers.jsonl`.", ""]
    seconds = report["seconds"]
    lines.append(f"Generated {report['generated_tokens']:,} tokens; load {seconds['load']:.0f} s, held-out loss "
                 f"{seconds['loss']:.0f} s, answers {seconds['generate']:.0f} s. Written {report['created']} by "
                 "`loradeck eval`.")
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ⏎ ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return (flat[:limit] + "…" if len(flat) > limit else flat).replace("|", "\\|") or "(empty)"
