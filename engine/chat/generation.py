"""Generation with a base model and any number of LoRA adapters over one copy of the base weights.

Adapters are loaded into one `PeftModel` under their own names. Side-by-side
panes are answered in **one batched `generate` call**: PEFT's mixed-adapter
batches route each row through its own adapter (`__base__` disables them all),
so N panes cost about one forward pass per token, not N. Memory is one base
model plus the (small) adapter weights, however many panes compare.

Sampling draws every row from its own generator seeded with the same seed
(common random numbers): with equal settings two panes see the same random
draws, so their answers differ because the models differ, not because of luck.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.errors import ModelError
from engine.models.adapters import resolve_adapter, run_dir_of
from engine.run.paths import RunPaths

BASE_LABEL = "base"
PEFT_BASE_NAME = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass
class GenerationSettings:
    """How answers are sampled. temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def problem(self) -> str | None:
        """Why these settings cannot be used, or None."""
        if not 1 <= self.max_new_tokens <= 8192:
            return f"max new tokens must be 1–8192, not {self.max_new_tokens}"
        if not 0 <= self.temperature <= 5:
            return f"temperature must be 0–5, not {self.temperature}"
        if not 0 < self.top_p <= 1:
            return f"top-p must be in (0, 1], not {self.top_p}"
        return None

    def to_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


@dataclass
class Pane:
    """One side of a comparison: which model answers and the conversation it answers."""

    label: str
    messages: list[dict[str, str]]


@dataclass
class PaneAnswer:
    """A pane's finished answer."""

    label: str
    text: str
    new_tokens: int
    stopped_by: str  # "eos", "length" or "cancelled"


@dataclass
class GenerationResult:
    """All panes' answers plus timing of the batched call."""

    answers: list[PaneAnswer]
    seconds: float
    first_token_seconds: float | None
    tokens_per_second: float = field(default=0.0)


def adapter_label(path: Path, taken: set[str]) -> str:
    """A short unique pane label for an adapter: its run id or folder name."""
    parts = path.resolve().parts
    label = parts[-1]
    if label in ("adapter", "handoff") and len(parts) > 1:
        label = parts[-2]
    elif label.startswith("step-") and len(parts) > 2:
        label = f"{parts[-3]}@{label}"
    unique, n = label, 2
    while unique in taken or unique in (BASE_LABEL, PEFT_BASE_NAME):
        unique, n = f"{label}-{n}", n + 1
    return unique


class _PaneStreamer:
    """Receives each generated token of the batch and hands every row's new text to `on_text(row, text)`.

    Decodes each row's tokens so far and sends what is new, holding back an
    incomplete multi-byte character; a row stops streaming at its end token.
    """

    def __init__(self, tokenizer, rows: int, end_ids: set[int], on_text: Callable[[int, str], None] | None):
        self.tokenizer = tokenizer
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [""] * rows
        self.ended = [False] * rows
        self.end_ids = end_ids
        self.on_text = on_text
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        for row, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            if self.ended[row]:
                continue
            if token in self.end_ids:
                self.ended[row] = True
                continue
            self.tokens[row].append(token)
            if self.on_text is not None:
                text = self.text(row)
                if text.endswith("\ufffd"):
                    continue
                if len(text) > len(self.sent[row]):
                    self.on_text(row, text[len(self.sent[row]):])
                    self.sent[row] = text

    def end(self) -> None:
        if self.on_text is None:
            return
        for row in range(len(self.tokens)):
            text = self.text(row)
            if len(text) > len(self.sent[row]):
                self.on_text(row, text[len(self.sent[row]):])
                self.sent[row] = text

    def text(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip()


def _common_random_sampler(seed: int, rows: int):
    """A logits processor that samples each row with its own generator, all seeded alike, and leaves only the
    drawn token (generation then runs greedy over it)."""
    import torch
    from transformers import LogitsProcessor

    class CommonRandomSampler(LogitsProcessor):
        def __init__(self):
            self.generators: list = []

        def __call__(self, input_ids, scores):
            if not self.generators:
                self.generators = [torch.Generator(device=scores.device).manual_seed(seed) for _ in range(rows)]
            probabilities = torch.softmax(scores.float(), dim=-1)
            chosen = torch.full_like(scores, float("-inf"))
            for row in range(scores.shape[0]):
                token = torch.multinomial(probabilities[row], 1, generator=self.generators[row])
                chosen[row, token] = 0.0
            return chosen

    return CommonRandomSampler()


PREFILL_FIRST_CHUNK = 64  # tokens; later chunks are sized so each takes about PREFILL_CHUNK_SECONDS
PREFILL_CHUNK_SECONDS = 0.2
PREFILL_MAX_CHUNK = 4096


def _prefill_in_chunks(model, encoded: dict, adapter_names: list[str] | None, should_stop: Callable[[], bool] | None):
    """Read all but the last prompt token into a KV cache, one chunk at a time, asking `should_stop` between
    chunks: a 10k-token prompt no longer holds the worker for a whole uninterruptible forward pass. Chunks are
    sized from the time the last one took (small on a CPU, large on a GPU), so cancel lands within about
    `PREFILL_CHUNK_SECONDS`.

    Returns the cache for `generate` to continue from, False when the prompt is short enough for `generate`
    to read in one go, or None when stopped.
    """
    import torch
    from transformers import DynamicCache

    input_ids, mask = encoded["input_ids"], encoded["attention_mask"]
    length = input_ids.shape[1]
    if should_stop is None or length <= PREFILL_FIRST_CHUNK * 2:
        return False
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as generate computes them for left padding
    cache = DynamicCache()
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    start, size = 0, PREFILL_FIRST_CHUNK
    while start < length - 1:
        if should_stop():
            return None
        end = min(start + size, length - 1)
        began = time.monotonic()
        model(input_ids=input_ids[:, start:end], attention_mask=mask[:, :end], position_ids=positions[:, start:end],
              past_key_values=cache, use_cache=True, cache_position=torch.arange(start, end, device=input_ids.device),
              **extra)
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize()
        took = max(time.monotonic() - began, 1e-4)
        size = max(16, min(PREFILL_MAX_CHUNK, int((end - start) * PREFILL_CHUNK_SECONDS / took)))
        start = end
    return None if should_stop() else cache


def _sharded(model) -> bool:
    """Whether FSDP shards the model (a training run's probes): its gathered-weight buffers outlive the call, so
    they must not be made under inference mode, where training could no longer write them."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def answer_batch(model, tokenizer, conversations: list[list[dict[str, str]]], settings: GenerationSettings, *,
                 adapter_names: list[str] | None = None, on_text: Callable[[int, str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> GenerationResult:
    """Answer several conversations in one batched `generate` call (left padding), streaming each row's text.

    `adapter_names` routes each row through a named PEFT adapter (`__base__` for none); `should_stop` is
    polled after every token and ends generation for all rows (their answers so far are kept).
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TemperatureLogitsWarper, \
        TopPLogitsWarper

    problem = settings.problem()
    if problem:
        raise ModelError(f"generation settings: {problem}")
    texts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
             for messages in conversations]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    prompt_tokens = encoded["input_ids"].shape[1]
    if isinstance(context, int) and prompt_tokens + settings.max_new_tokens > context:
        raise ModelError(f"the conversation is {prompt_tokens:,} tokens; with {settings.max_new_tokens:,} new tokens "
                         f"it passes the model's context of {context:,} — shorten it or lower max new tokens")
    device = next(model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    end_ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    end_ids.update(configured if isinstance(configured, list) else [configured])
    end_ids.discard(None)
    rows = len(conversations)
    streamer = _PaneStreamer(tokenizer, rows, end_ids, on_text)
    cancelled = [False]

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if should_stop is not None and should_stop():
                cancelled[0] = True
            return torch.full((input_ids.shape[0],), cancelled[0], dtype=torch.bool, device=input_ids.device)

    processors = LogitsProcessorList()
    if settings.temperature > 0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_p < 1:
            processors.append(TopPLogitsWarper(settings.top_p))
        processors.append(_common_random_sampler(settings.seed, rows))
    kwargs = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id, do_sample=False,
                  temperature=None, top_p=None, top_k=None, logits_processor=processors, streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([StopWhenAsked()]))
    if adapter_names is not None:
        kwargs["adapter_names"] = adapter_names
    torch.manual_seed(settings.seed)
    started = time.monotonic()
    with torch.inference_mode(not _sharded(model)):
        cache = _prefill_in_chunks(model, encoded, adapter_names, should_stop)
        if cache is None:
            cancelled[0] = True
        else:
            if cache is not False:
                kwargs["past_key_values"] = cache
            model.generate(**encoded, **kwargs)
    seconds = time.monotonic() - started
    answers = []
    for row in range(rows):
        new_tokens = len(streamer.tokens[row])
        stopped_by = ("eos" if streamer.ended[row] else "cancelled" if cancelled[0] else "length")
        answers.append(PaneAnswer(adapter_names[row] if adapter_names else "", streamer.text(row).strip(),
                                  new_tokens, stopped_by))
    total = sum(a.new_tokens for a in answers)
    first = streamer.first_token_at - started if streamer.first_token_at else None
    return GenerationResult(answers, seconds, first, total / seconds if seconds > 0 else 0.0)


class ChatModels:
    """A base model plus named adapters, generating for any label."""

    def __init__(self, base_name: str, adapters: list[str | Path] = (), *, load_in_4bit: bool = False,
                 dtype: str = "auto", device: str | None = None, progress=None):
        from engine.models.loading import load_model, load_tokenizer

        kwargs = {"progress": progress} if progress else {}
        self.base_name = base_name
        self.load_in_4bit = load_in_4bit
        self.tokenizer = load_tokenizer(base_name, **kwargs)
        self.model = load_model(base_name, load_in_4bit=load_in_4bit, dtype=dtype, device=device, **kwargs)
        self.model.eval()
        self.labels: list[str] = [BASE_LABEL]
        self.adapter_paths: dict[str, Path] = {}
        for adapter in adapters:
            self.add_adapter(adapter)

    def add_adapter(self, path: str | Path) -> str:
        """Load one more adapter under a new label; returns the label."""
        from peft import PeftModel

        folder = resolve_adapter(path)
        label = adapter_label(folder, set(self.labels))
        try:
            if not self.adapter_paths:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=label)
            else:
                self.model.load_adapter(str(folder), adapter_name=label)
        except (RuntimeError, ValueError, KeyError) as exc:
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            first = str(exc).strip().splitlines()[0][:160]
            raise ModelError(f"adapter '{path}' does not fit base model '{self.base_name}' "
                             f"(trained on {base!r}): {first}") from None
        self.model.eval()
        self.adapter_paths[label] = folder
        self.labels.append(label)
        return label

    def answer(self, panes: list[Pane], settings: GenerationSettings | None = None, *,
               on_text: Callable[[int, str], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> GenerationResult:
        """Answer every pane in one batched call; `on_text(pane_index, text)` streams new text as it comes."""
        for pane in panes:
            if pane.label not in self.labels:
                raise ModelError(f"unknown model label '{pane.label}' — choose one of {', '.join(self.labels)}")
        names = None
        if self.adapter_paths:
            names = [PEFT_BASE_NAME if pane.label == BASE_LABEL else pane.label for pane in panes]
        result = answer_batch(self.model, self.tokenizer, [pane.messages for pane in panes],
                              settings or GenerationSettings(), adapter_names=names, on_text=on_text,
                              should_stop=should_stop)
        for pane, answer in zip(panes, result.answers):
            answer.label = pane.label
        return result

    def generate(self, label: str, messages: list[dict], settings: GenerationSettings | None = None) -> str:
        """The full answer of model `label` to a conversation."""
        return self.answer([Pane(label, messages)], settings).answers[0].text

    def memory(self) -> dict:
        """Bytes held by the base weights (counted once, by storage) and by each adapter, plus process RSS."""
        from engine.run.telemetry import host_snapshot, process_memory

        seen: set[int] = set()
        base_bytes = 0
        adapter_bytes = {label: 0 for label in self.adapter_paths}
        tensors = list(self.model.named_parameters()) + list(self.model.named_buffers())
        for name, tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            owner = next((label for label in self.adapter_paths if f".{label}." in name or name.endswith(f".{label}")),
                         None) if "lora_" in name else None
            if owner:
                adapter_bytes[owner] += storage.nbytes()
            else:
                base_bytes += storage.nbytes()
        report = {"base_bytes": base_bytes, "adapter_bytes": adapter_bytes,
                  "process_rss": host_snapshot()["process_rss"]}
        cuda = process_memory()
        if cuda:
            report["cuda_allocated"] = cuda["allocated"]
        return report


def ratings_folder(adapters: list[str | Path]) -> Path | None:
    """Where blind ratings of these adapters are saved: `chat/` inside the first adapter's run directory."""
    for adapter in adapters:
        run = run_dir_of(resolve_adapter(adapter))
        if run is not None:
            return RunPaths(run).chat
    return None


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """Two answers compared word by word: (kind, text) pieces, kind in same / removed / added.

    Whitespace stays attached to the word before it, so joining the `same` and `added` pieces gives `new`.
    """
    import difflib
    import re

    old_words, new_words = re.findall(r"\S+\s*", old), re.findall(r"\S+\s*", new)
    pieces: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=[w.strip() for w in old_words], b=[w.strip() for w in new_words],
                                      autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            pieces.append(("same", "".join(new_words[b0:b1])))
            continue
        if a1 > a0:
            pieces.append(("removed", "".join(old_words[a0:a1])))
        if b1 > b0:
            pieces.append(("added", "".join(new_words[b0:b1])))
    return pieces
