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

from engine.train.memory import FITS, WONT_FIT, plan_step, verdict_for

@dataclass
class PreflightReport:
    """Estimate, measurement and verdict for one config on this machine."""

    device: str
    dtype: str
    weights_bytes: int
    lora_params: int
    lora_bytes: int  # gradients + AdamW moments
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
    gradient_checkpointing: bool = False
    checkpointing_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def run_preflight(config, *, measure: bool = True, progress=lambda message: None) -> PreflightReport:
    """Estimate and (unless `measure` is False) measure the memory a run needs, with a verdict."""
    from engine.train.launcher import check_run_inputs

    check_run_inputs(config)  # a missing model or file is refused before torch is even imported
    import torch

    from engine.data.preferences import configured_preference_data, preference_samples
    from engine.data.tokenize import prepare_data, read_data
    from engine.models.backends import build_peft_model, choose_backend
    from engine.models.loading import best_device, choose_dtype
    from engine.models.parts import chunked_loss_parts
    from engine.train.batches import packing_choice
    from engine.train.distributed import resolve_processes, shards_model
    from engine.train.loss import chunked_causal_lm_loss

    device = best_device()
    dtype = choose_dtype(config.model.dtype, device)
    dpo = config.train.method == "dpo"
    # the data first: a broken file is refused before the model loads
    pairs = configured_preference_data(config).train if dpo else None
    read = None if dpo else read_data(config.data, config.train.seed)
    progress(f"loading {config.model.name} on {device}")
    backend = choose_backend(config.backend.name, device)
    model, tokenizer = build_peft_model(config, device, backend, progress)
    samples = preference_samples(config, tokenizer, pairs) if dpo else \
        prepare_data(config.data, tokenizer, config.train.seed, read).train
    packed = False if dpo else packing_choice(config.train.packing, device, model, len(tokenizer))[0]
    processes = resolve_processes(config.distributed.processes)
    sharded = shards_model(config.distributed.strategy, processes)
    plan = plan_step(config, model, samples, tokenizer.pad_token_id, device=device, dtype=dtype,
                     backend=backend.name, packed=packed, processes=processes)
    batch, rows, estimate, available = plan.batch, plan.rows, plan.estimate, plan.available
    tokens = batch["input_ids"].shape[1]
    measured = reserved = None
    if measure and not sharded:
        progress(f"probing one forward + backward on the longest batch ({rows} x {tokens} tokens)")
        if plan.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        parts = chunked_loss_parts(model) if plan.chunked_loss else None

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
    need = plan.need if sharded or measured is None else measured
    ratio = need / available if available else float("inf")
    verdict = verdict_for(need, available)
    how = "estimated per GPU" if sharded else "measured" if measured is not None else "estimated"
    shown = f"{tokens} tokens packed" if packed else f"{rows} x {tokens} tokens"
    reasons = [f"needs {need / 1e9:.2f} GB ({how}) of "
               f"{available / 1e9:.2f} GB available on {device} ({ratio:.0%})",
               f"estimate {estimate.total / 1e9:.2f} GB: weights {estimate.weights / 1e9:.2f} GB + LoRA grads/AdamW "
               f"{estimate.lora_state / 1e9:.3f} GB + activations {estimate.activations / 1e9:.2f} GB for {shown}"
               + (" (DPO: chosen and rejected of each pair; the reference pass keeps no activations)" if dpo else ""),
               f"gradient checkpointing {'on' if plan.checkpointing else 'off'} ({plan.checkpointing_reason})"]
    if sharded:
        reasons.append(f"per GPU, with {processes} processes and FSDP: 1/{processes} of the weights "
                       f"({estimate.weights / processes / 1e9:.2f} GB), two layers gathered at a time "
                       f"({2 * estimate.weights / max(1, plan.shape.layers) / 1e9:.2f} GB), "
                       f"1/{processes} of the LoRA state and {shown} of activations (not probed: "
                       "one process holding the whole model is not what training meets)")
    elif processes > 1:
        reasons.append(f"per GPU, with {processes} processes: DistributedDataParallel keeps the whole model on each "
                       f"GPU and {shown} of activations per process (global batch "
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
        if not plan.checkpointing:
            suggestions.append("train.gradient_checkpointing=true (~30% slower, far fewer activations)")
        if not config.model.load_in_4bit:
            suggestions.append("model.load_in_4bit=true (QLoRA: weights ~4x smaller)")
        lengths = sorted(len(s.input_ids) for s in samples)
        p95 = lengths[int(0.95 * (len(lengths) - 1))]
        if p95 < max(lengths):
            suggestions.append(f"data.max_length={p95} (covers 95% of samples untruncated)")
    return PreflightReport(device=device, dtype=str(dtype).replace("torch.", ""), weights_bytes=estimate.weights,
                           lora_params=plan.shape.lora_params, lora_bytes=estimate.lora_state,
                           activation_bytes=estimate.activations, estimate_bytes=estimate.total,
                           longest_tokens=tokens, batch_size=config.train.batch_size,
                           measured_peak_bytes=measured, measured_reserved_bytes=reserved,
                           available_bytes=available, verdict=verdict, per_gpu_bytes=int(need) if sharded else None,
                           reasons=reasons, suggestions=suggestions, gradient_checkpointing=plan.checkpointing,
                           checkpointing_reason=plan.checkpointing_reason)


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
