"""Will this run fit? An estimate from the config and a measured probe, before any GPU hour is spent.

The estimate adds weights at the chosen precision, LoRA parameters with their
gradients and AdamW state, and activations for the longest batch after the
chat template. The probe runs one real forward + backward on that batch and
measures peak device memory (CUDA) or peak resident memory (CPU) against what
is free.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.models.parts import LOGITS_CHUNK_TOKENS

FITS, TIGHT, WONT_FIT = "fits", "tight", "won't fit"


@dataclass
class PreflightReport:
    """Estimate, measurement and verdict for one config on this machine."""

    device: str
    dtype: str
    weights_bytes: int
    lora_params: int
    lora_bytes: int  # params + grads + AdamW moments
    activation_bytes: int
    estimate_bytes: int
    longest_tokens: int
    batch_size: int
    measured_peak_bytes: int | None
    measured_reserved_bytes: int | None
    available_bytes: int
    verdict: str
    reasons: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    per_gpu_bytes: int | None = None  # several processes sharding the model (FSDP): what one GPU holds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bytes_per_weight(dtype) -> float:
    import torch

    return {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}.get(dtype, 4)


def estimate_memory(model_config, lora_params: int, total_params: int, dtype, load_in_4bit: bool,
                    batch_size: int, tokens: int, gradient_checkpointing: bool) -> tuple[int, int, int]:
    """(weights, lora incl. grads + AdamW, activations) in bytes, from the model's config alone."""
    per_weight = _bytes_per_weight(dtype)
    hidden = getattr(model_config, "hidden_size", 1024)
    layers = getattr(model_config, "num_hidden_layers", 24)
    vocab = getattr(model_config, "vocab_size", 32000)
    intermediate = getattr(model_config, "intermediate_size", 4 * hidden)
    embedding = vocab * hidden
    if load_in_4bit:
        # NF4 with double quant: ~0.53 bytes per linear weight; embeddings stay in the compute dtype.
        weights = int((total_params - embedding) * 0.53 + embedding * per_weight)
    else:
        weights = int(total_params * per_weight)
    lora = lora_params * 4 * 4  # fp32 weight + grad + two AdamW moments
    positions = batch_size * tokens
    if gradient_checkpointing:
        per_layer = positions * hidden * per_weight * 2
    else:
        # attention inputs/outputs, MLP intermediates (gate, up, act) and norms kept for backward
        per_layer = positions * (10 * hidden + 3 * intermediate) * per_weight
    # the chunked loss (engine/train/loss.py) holds fp32 logits, softmax and gradient for one chunk at a time
    logits = min(positions, LOGITS_CHUNK_TOKENS) * vocab * 4 * 3 + positions * hidden * per_weight
    return weights, lora, per_layer * layers + logits


def _available(device: str) -> int:
    import psutil

    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_allocated())
    return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)


class _PeakRss:
    """Samples this process's RSS in a thread; `peak` is the highest seen."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def longest_batch(samples, batch_size: int, pad_token_id: int):
    """A batch of the `batch_size` longest samples: the worst case the run will meet."""
    from engine.train.batches import make_collator

    longest = sorted(samples, key=lambda s: len(s.input_ids), reverse=True)[:batch_size]
    while len(longest) < batch_size:
        longest.append(longest[0])
    return make_collator(pad_token_id)([{"input_ids": s.input_ids, "labels": s.labels} for s in longest])


def dpo_samples(config, tokenizer) -> list:
    """Every chosen and every rejected conversation of the preference pairs, tokenized as training renders them:
    a DPO batch holds both halves of each pair."""
    from engine.data.preferences import load_preference_data
    from engine.data.readers import Conversation
    from engine.data.tokenize import tokenize_conversations

    pairs = load_preference_data(config.data.path, eval_path=config.data.eval_path, eval_split=config.data.eval_split,
                                 seed=config.train.seed, system_prompt=config.data.system_prompt).train
    conversations = [Conversation(pair.prompt + getattr(pair, side), None, pair.tools, pair.record)
                     for pair in pairs for side in ("chosen", "rejected")]
    return tokenize_conversations(tokenizer, conversations, config.data.max_length, "completions")


def run_preflight(config, *, measure: bool = True, progress=lambda message: None) -> PreflightReport:
    """Estimate and (unless `measure` is False) measure the memory a run needs, with a verdict."""
    import torch

    from engine.models.backends import build_peft_model, choose_backend
    from engine.data.tokenize import prepare_data
    from engine.models.loading import best_device, choose_dtype
    from engine.models.parts import chunked_loss_parts
    from engine.train.loss import chunked_causal_lm_loss, uses_chunked_loss

    device = best_device()
    dtype = choose_dtype(config.model.dtype, device)
    progress(f"loading {config.model.name} on {device}")
    backend = choose_backend(config.backend.name, device)
    model, tokenizer = build_peft_model(config, device, backend, progress)
    dpo = config.train.method == "dpo"
    samples = dpo_samples(config, tokenizer) if dpo else prepare_data(config.data, tokenizer, config.train.seed).train
    trainable, total = model.get_nb_trainable_parameters()
    rows = config.train.batch_size * (2 if dpo else 1)  # DPO: each pair's chosen and rejected in one batch
    batch = longest_batch(samples, rows, tokenizer.pad_token_id)
    tokens = batch["input_ids"].shape[1]
    weights, lora, activations = estimate_memory(
        model.config, trainable, total, dtype, config.model.load_in_4bit, rows, tokens,
        config.train.gradient_checkpointing)
    estimate = weights + lora + activations
    available = _available(device)
    measured = reserved = None
    from engine.train.distributed import resolve_processes

    processes = resolve_processes(config.distributed.processes)
    sharded = config.distributed.strategy == "fsdp" and processes > 1
    if measure and not sharded:
        progress(f"probing one forward + backward on the longest batch ({rows} x {tokens} tokens)")
        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        parts = chunked_loss_parts(model) if uses_chunked_loss(backend.name) else None

        def step():  # the loss training computes, so the probe meets the memory training will
            loss = chunked_causal_lm_loss(*parts, batch) if parts else model(**batch).loss
            loss.backward()
            optimizer.step()

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            step()
            measured = int(torch.cuda.max_memory_allocated())
            reserved = int(torch.cuda.max_memory_reserved())
        else:
            with _PeakRss() as peak:
                step()
            measured = int(peak.peak)
    need = measured if measured is not None else estimate
    if sharded:  # each GPU will hold 1/N of the model: the estimate for one of them, not a whole-model probe
        layers = max(1, getattr(getattr(model.config, "get_text_config", lambda: model.config)(),
                                "num_hidden_layers", 1))
        gathered = 2 * weights / layers  # the layer being computed and the next one, fetched ahead
        need = weights / processes + gathered + lora / processes + activations
    ratio = need / available if available else float("inf")
    verdict = FITS if ratio < 0.8 else TIGHT if ratio < 0.95 else WONT_FIT
    how = "estimated per GPU" if sharded else "measured" if measured is not None else "estimated"
    reasons = [f"needs {need / 1e9:.2f} GB ({how}) of "
               f"{available / 1e9:.2f} GB available on {device} ({ratio:.0%})",
               f"estimate {estimate / 1e9:.2f} GB: weights {weights / 1e9:.2f} GB + LoRA/grads/AdamW "
               f"{lora / 1e9:.3f} GB + activations {activations / 1e9:.2f} GB for {rows} x {tokens} tokens"
               + (" (DPO: chosen and rejected of each pair; the reference pass keeps no activations)" if dpo else "")]
    if sharded:
        reasons.append(f"per GPU, with {processes} processes and FSDP: 1/{processes} of the weights "
                       f"({weights / processes / 1e9:.2f} GB), two layers gathered at a time "
                       f"({gathered / 1e9:.2f} GB), "
                       f"1/{processes} of the LoRA state and {rows} x {tokens} tokens of activations (not probed: "
                       "one process holding the whole model is not what training meets)")
    elif processes > 1:
        reasons.append(f"per GPU, with {processes} processes: DistributedDataParallel keeps the whole model on each "
                       f"GPU and {rows} x {tokens} tokens of activations per process (global batch "
                       f"{processes * config.train.batch_size * config.train.grad_accum} rows)")
    if reserved is not None:
        reasons.append(f"the CUDA allocator reserved {reserved / 1e9:.2f} GB for it: {(available - reserved) / 1e9:.2f}"
                       " GB headroom left")
    suggestions = []
    if verdict != FITS:
        if config.train.batch_size > 1:
            suggestions.append(f"train.batch_size={max(1, config.train.batch_size // 2)} with "
                               f"train.grad_accum={config.train.grad_accum * 2} (same effective batch, about half "
                               "the activations)")
        if not config.train.gradient_checkpointing:
            suggestions.append("train.gradient_checkpointing=true (~30% slower, far fewer activations)")
        if not config.model.load_in_4bit:
            suggestions.append("model.load_in_4bit=true (QLoRA: weights ~4x smaller)")
        lengths = sorted(len(s.input_ids) for s in samples)
        p95 = lengths[int(0.95 * (len(lengths) - 1))]
        if p95 < tokens:
            suggestions.append(f"data.max_length={p95} (covers 95% of samples untruncated)")
    return PreflightReport(device=device, dtype=str(dtype).replace("torch.", ""), weights_bytes=weights,
                           lora_params=trainable, lora_bytes=lora, activation_bytes=activations,
                           estimate_bytes=estimate, longest_tokens=tokens, batch_size=config.train.batch_size,
                           measured_peak_bytes=measured, measured_reserved_bytes=reserved,
                           available_bytes=available, verdict=verdict, per_gpu_bytes=int(need) if sharded else None,
                           reasons=reasons, suggestions=suggestions)


@dataclass
class SpeedReport:
    """What a few real training steps showed: speed, utilisation, memory, and what fits in the session."""

    device: str
    steps: int
    tokens_per_s: float | None
    mfu: float | None
    padding: float | None
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    train_tokens: int
    epoch_seconds: float | None
    budget_seconds: float | None
    epochs_in_budget: float | None
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_speed(config, *, steps: int = 8, budget_seconds: float | None = None,
                  progress=lambda message: None) -> SpeedReport:
    """Train `steps` real steps in a throwaway run directory (the engine exactly as a run uses it) and report
    tokens/s, MFU, padding, peak memory, and how many epochs fit in `budget_seconds` (or the config's session
    budget). The first step (warm-up, compilation, allocator growth) is left out of the speed."""
    import dataclasses
    import statistics
    import tempfile
    from pathlib import Path

    from engine.errors import RunError
    from engine.run.events import read_events
    from engine.train.run import run_training
    from engine.train.session import session_budget

    measured = dataclasses.replace(
        config, train=dataclasses.replace(config.train, max_steps=steps + 1, save_every=0, eval_every=0, log_every=1),
        session=dataclasses.replace(config.session, budget="", preset="", deadline=""),
        probe=dataclasses.replace(config.probe, prompts=[]),
        data=dataclasses.replace(config.data, eval_path="", eval_split=0.0))
    peaks = _PeakRss()
    with tempfile.TemporaryDirectory(prefix="loradeck-speed-") as folder, peaks:
        code = run_training(Path(folder) / "run", measured, progress=progress)
        events = read_events(Path(folder) / "run" / "events.jsonl")
    if code:
        error = next((e["message"] for e in events if e["type"] == "error"), f"exit code {code}")
        raise RunError(f"the speed probe failed: {error}")
    loaded = next(e for e in events if e["type"] == "model_loaded")
    timed = [e for e in events if e["type"] == "step"][1:]
    median = lambda values: statistics.median(values) if values else None  # noqa: E731
    speed = median([e["tokens_per_s"] for e in timed if e.get("tokens_per_s")])
    mfu = median([e["mfu"] for e in timed if e.get("mfu") is not None])
    padding = median([e["padding"] for e in timed if e.get("padding") is not None])
    device = loaded.get("device", "cpu")
    allocated = reserved = None
    if device == "cuda":
        import torch

        allocated, reserved = int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
    else:
        allocated = int(peaks.peak)
    train_tokens = int(loaded.get("train_tokens") or 0)
    epoch_seconds = train_tokens / speed if speed and train_tokens else None
    budget = budget_seconds if budget_seconds is not None else session_budget(config.session)
    epochs = budget / epoch_seconds if budget and epoch_seconds else None
    return SpeedReport(device=loaded.get("device_name") or device, steps=len(timed), tokens_per_s=speed, mfu=mfu,
                       padding=padding, peak_allocated_bytes=allocated, peak_reserved_bytes=reserved,
                       train_tokens=train_tokens, epoch_seconds=epoch_seconds, budget_seconds=budget,
                       epochs_in_budget=epochs)
