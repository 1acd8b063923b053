"""Side-by-side chat cost: N panes in loradeck's one batched call vs N plain `generate` calls, side by side.

On the bundled SmolLM2-135M-Instruct with LoRA adapters shaped like the demo
run's (r 16, all linear layers; random weights: the cost does not depend on
what they learned), for N = 1, 2, 3 panes (base + N-1 adapters):

- ours:  `ChatModels.answer` — one `generate` over a mixed-adapter batch, streaming;
- plain: what a user would write with the libraries alone — one `generate` per
  pane, switching with `set_adapter` / `disable_adapter`, one after another.

Every pane generates exactly `--tokens` new tokens (end tokens suppressed) so
both sides do the same work. Also measured: time to the first streamed token
in-process and through the worker process (request on stdin → first `text`
event), which is what the chat screen waits for.

    python bench/chat_generation.py [--tokens 48] [--repeats 3]

Targets (issue 7): N panes cost about N times one pane or less; first token under 2 s.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


def make_adapter(model_dir: str, folder: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                     init_lora_weights=False)).save_pretrained(folder)
    return folder


def plain_generate(models, label: str, tokens: int) -> None:
    """The baseline: one plain generate for one pane (adapter switched the PEFT way)."""
    import contextlib

    import torch

    tokenizer, model = models.tokenizer, models.model
    encoded = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    context = model.disable_adapter() if label == "base" else contextlib.nullcontext()
    if label != "base":
        model.set_adapter(label)
    with torch.inference_mode(), context:
        output = model.generate(**encoded, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    assert output.shape[1] - encoded["input_ids"].shape[1] == tokens


def ours(models, labels: list[str], tokens: int) -> tuple[float, float]:
    """Seconds for the batched call and seconds to the first streamed text."""
    from engine.chat.generation import GenerationSettings, Pane

    first: list[float] = []
    started = time.monotonic()
    config = models.model.generation_config
    config.min_new_tokens = tokens  # every pane runs the full length, like the baseline
    try:
        result = models.answer([Pane(label, PROMPT) for label in labels], GenerationSettings(max_new_tokens=tokens),
                               on_text=lambda pane, text: first.append(time.monotonic()) if not first else None)
    finally:
        config.min_new_tokens = None
    assert all(answer.new_tokens == tokens for answer in result.answers), [a.new_tokens for a in result.answers]
    return time.monotonic() - started, (first[0] - started) if first else float("nan")


def worker_first_token(base: str, adapters: list[Path], repeats: int) -> tuple[float, list[float]]:
    """Worker start-to-ready seconds, and request-to-first-text seconds for two panes."""
    from engine.chat.client import ChatWorkerClient

    events: queue.Queue = queue.Queue()
    client = ChatWorkerClient(events.put)
    started = time.monotonic()
    client.start(base, [str(a) for a in adapters[:1]])
    while events.get(timeout=300)["event"] != "ready":
        pass
    ready = time.monotonic() - started
    firsts = []
    try:
        for request in range(repeats):
            sent = time.monotonic()
            client.generate(request, [{"label": "base", "messages": PROMPT},
                                      {"label": adapters[0].name, "messages": PROMPT}], {"max_new_tokens": 16})
            first = None
            while True:
                event = events.get(timeout=300)
                if event["event"] == "text" and first is None:
                    first = time.monotonic() - sent
                if event["event"] in ("done", "error"):
                    break
            firsts.append(first)
    finally:
        client.stop()
    return ready, firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from engine.chat.generation import ChatModels
    from engine.models.loading import resolve_model

    base = resolve_model("smollm2-135m-instruct", progress=lambda message: None)
    folder = Path(tempfile.mkdtemp(prefix="loradeck-chat-bench-"))
    adapters = [make_adapter(base, folder / f"adapter{i}", seed=i) for i in (1, 2)]
    models = ChatModels(base, adapters)
    labels = models.labels
    print(f"bundled model, {args.tokens} new tokens per pane, median of {args.repeats}; adapters r16 all-linear\n")
    ours(models, labels[:1], 4)  # warm up
    plain_generate(models, "base", 4)
    one_pane = None
    print(f"{'panes':>5}  {'ours (batched)':>14}  {'plain (sequential)':>18}  {'ours/plain':>10}  "
          f"{'ours / (N x 1 pane)':>19}  {'first token':>11}")
    for count in (1, 2, 3):
        chosen = labels[:count]
        ours_runs, firsts, plain_runs = [], [], []
        for _ in range(args.repeats):  # alternate, so drift hits both sides alike
            seconds, first = ours(models, chosen, args.tokens)
            ours_runs.append(seconds)
            firsts.append(first)
            started = time.monotonic()
            for label in chosen:
                plain_generate(models, label, args.tokens)
            plain_runs.append(time.monotonic() - started)
        ours_s, plain_s = statistics.median(ours_runs), statistics.median(plain_runs)
        one_pane = one_pane or ours_s
        print(f"{count:>5}  {ours_s:>12.2f} s  {plain_s:>16.2f} s  {ours_s / plain_s:>9.2f}x  "
              f"{ours_s / (count * one_pane):>18.2f}x  {statistics.median(firsts):>9.2f} s")
    ready, worker_firsts = worker_first_token(base, adapters, args.repeats)
    print(f"\nworker process: ready {ready:.1f} s after start (imports + load); "
          f"first token of 2 panes {statistics.median(worker_firsts):.2f} s after the request "
          f"(max {max(worker_firsts):.2f} s)")


if __name__ == "__main__":
    main()
