"""Training throughput, side by side in one run, on this CPU: loradeck's engine vs a hand loop vs SFTTrainer defaults.

Same base model (the bundled SmolLM2-135M-Instruct unless --model), same LoRA
(r16, all-linear), same rows in the same order. Two workloads:

- demo:   sample_data/demo_train.jsonl, batch 4 (short rows of similar length);
- alpaca: ../shared/datasets/real/alpaca_en_demo.json, batch 8 (lengths vary widely:
          p50 ~116 tokens, max several hundred), with and without length-grouped batches.

Every figure counts real (non-padding) tokens; each contender's first step
(warm-up, allocator growth) is excluded. The CPU's capability, the dtype each
contender used, the padding share and the achieved GFLOP/s (4 x parameters per
real token: forward plus the backward through frozen weights) against a matmul
peak measured here in the same run are printed, so ratios can be compared across
machines.

    python bench/train_throughput.py [--workload demo|alpaca|both] [--steps 6] [--trl-steps 3] [--model NAME]

Targets: engine >= 1.0x the hand loop at equal dtype on both workloads; on a CPU
with native bf16, auto dtype >= 1.25x fp32; on alpaca, length-grouped >= 1.3x the
real tokens/s of random batches.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALPACA = REPO.parent / "shared" / "datasets" / "real" / "alpaca_en_demo.json"
WORKLOADS = {"demo": (REPO / "sample_data" / "demo_train.jsonl", 4, 256),
             "alpaca": (ALPACA, 8, 512)}


def cpu_description() -> str:
    import torch

    from engine.models.loading import cpu_bf16_feature

    name = platform.processor() or "cpu"
    try:
        name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    feature = cpu_bf16_feature()
    return (f"{name}; {os.cpu_count()} cores; torch kernels {torch.backends.cpu.get_cpu_capability()}; "
            f"native bf16: {feature or 'no'}")


def matmul_peak_gflops(dtype_name: str, size: int = 1024, seconds: float = 2.0) -> float:
    """Dense matmul GFLOP/s on this machine in a dtype: the best of repeated n x n products."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - started) / 1e9)
    return best


def bench_config(model: str, workload: str, steps: int, *overrides: str):
    from engine.config import load_config

    path, batch, max_length = WORKLOADS[workload]
    return load_config(REPO / "sample_data" / "configs" / "demo.toml", [
        f"model.name={model}", f"data.path={path}", f"data.max_length={max_length}", f"train.max_steps={steps}",
        f"train.batch_size={batch}", "train.grad_accum=1", "train.save_every=0", "train.eval_every=0",
        "data.eval_path=", "data.eval_split=0", "probe.prompts=[]", "train.warmup_steps=0", *overrides])


def rows_in_engine_order(config, tokenizer, steps):
    """The exact rows, batch by batch, that our engine trains on, for the hand loop."""
    from engine.data.tokenize import prepare_data
    from engine.train.batches import EpochShuffleSampler, LengthGroupedSampler

    data = prepare_data(config.data, tokenizer, config.train.seed)
    batch = config.train.batch_size
    order = (LengthGroupedSampler([len(s.input_ids) for s in data.train], batch, config.train.seed)
             if config.train.group_by_length else EpochShuffleSampler(len(data.train), config.train.seed)).order(0)
    return [[{"input_ids": row.input_ids, "labels": row.labels}
             for row in (data.train[order[(index * batch + k) % len(order)]] for k in range(batch))]
            for index in range(steps)]


def bench_hand_loop(config, steps):
    """A plain peft + torch loop in the engine's dtype: bf16 autocast over a bf16 base where the engine uses it."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model

    from engine.models.loading import dtype_choice, load_model, load_tokenizer
    from engine.train.batches import make_collator

    dtype, _ = dtype_choice(config.model.dtype, "cpu")
    tokenizer = load_tokenizer(config.model.name)
    collate = make_collator(tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(load_model(config.model.name, device="cpu", dtype=config.model.dtype),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
    stamps, seen, padded = [], 0, 0  # (wall time at step end, real tokens, batch tokens)
    for rows in rows_in_engine_order(config, tokenizer, steps):
        batch = collate(rows)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
        stamps.append((time.perf_counter(), seen, padded))
    (t0, n0, p0), (t1, n1, p1) = stamps[0], stamps[-1]
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "dtype": str(dtype).replace("torch.", ""),
            "padding": 1 - (n1 - n0) / (p1 - p0), "loss": float(loss)}


def bench_engine(config, steps):
    from engine.run.events import read_events
    from engine.train.run import run_training

    with tempfile.TemporaryDirectory() as folder:
        run_training(Path(folder) / "run", config)
        events = read_events(Path(folder) / "run" / "events.jsonl")
    steps_logged = [e for e in events if e["type"] == "step"]
    loaded = next(e for e in events if e["type"] == "model_loaded")
    first, last = steps_logged[0], steps_logged[-1]  # the first step is warm-up
    later = steps_logged[1:]
    return {"tokens_per_s": (last["tokens_seen"] - first["tokens_seen"]) / (last["ts"] - first["ts"]),
            "dtype": loaded["dtype"], "padding": sum(e["padding"] for e in later) / len(later),
            "loss": sum(e["loss"] for e in later) / len(later), "params": loaded["total_params"]}


def bench_trl_defaults(config, steps):
    """Plain SFTTrainer with its default SFTConfig on the same rows (messages format)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from engine.data.readers import load_dataset_file, to_conversations
    from engine.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(config.model.name)
    conversations = to_conversations(load_dataset_file(config.data.path))
    dataset = Dataset.from_list([{"messages": c.messages} for c in conversations])
    stamps: list[tuple[float, int]] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append((time.perf_counter(), state.num_input_tokens_seen))

    with tempfile.TemporaryDirectory() as folder:
        # use_cpu is the one change TRL's defaults need to run here at all (bf16=True otherwise refuses a CPU).
        args = SFTConfig(output_dir=folder, max_steps=steps, use_cpu=True, report_to="none",
                         per_device_train_batch_size=config.train.batch_size, max_length=config.data.max_length,
                         include_num_input_tokens_seen="non_padding", disable_tqdm=True, save_strategy="no")
        trainer = SFTTrainer(model=load_model(config.model.name, device="cpu"), args=args, train_dataset=dataset,
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"),
                             callbacks=[Stamp()])
        trainer.train()
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return {"tokens_per_s": (n1 - n0) / (t1 - t0),
            "dtype": f"bf16 autocast={args.bf16}, checkpointing={args.gradient_checkpointing}",
            "padding": None, "loss": None}


def run_workload(workload: str, model: str, steps: int, trl_steps: int, peaks: dict[str, float]) -> dict:
    import torch

    from engine.models.loading import dtype_choice

    auto_dtype = str(dtype_choice("auto", "cpu")[0]).replace("torch.", "")
    contenders = [("hand-written peft loop", bench_hand_loop, steps, ()),
                  ("loradeck engine (auto dtype)", bench_engine, steps, ())]
    if auto_dtype != "float32":
        contenders.append(("loradeck engine (fp32)", bench_engine, steps, ("model.dtype=float32",)))
    if workload == "alpaca":
        contenders.append(("loradeck, random batches", bench_engine, steps, ("train.group_by_length=false",)))
    if trl_steps:
        contenders.append(("plain SFTTrainer defaults", bench_trl_defaults, trl_steps, ()))
    results = {}
    for name, function, count, overrides in contenders:
        print(f"  running {name} ({count} steps)…", flush=True)
        torch.manual_seed(0)
        results[name] = function(bench_config(model, workload, count, *overrides), count)
    params = results["loradeck engine (auto dtype)"]["params"]
    _, batch, _ = WORKLOADS[workload]
    print(f"\n{workload}: batch {batch}, real (non-padding) tokens/s; GFLOP/s = 4 x {params / 1e6:.0f}M params x "
          "tokens/s, against this machine's measured matmul peak in that dtype")
    print(f"  {'contender':32s} {'dtype':>44s} {'tok/s':>8s} {'padding':>8s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, result in results.items():
        gflops = 4 * params * result["tokens_per_s"] / 1e9
        peak = peaks.get("bfloat16" if result["dtype"] == "bfloat16" else "float32")
        padding = f"{result['padding']:.0%}" if result["padding"] is not None else "—"
        print(f"  {name:32s} {result['dtype']:>44s} {result['tokens_per_s']:8.1f} {padding:>8s} {gflops:8.1f} "
              f"{gflops / peak:8.1%}")
    ours = results["loradeck engine (auto dtype)"]["tokens_per_s"]
    print(f"  ours / hand loop (same dtype, same rows) = {ours / results['hand-written peft loop']['tokens_per_s']:.2f}x"
          "   (target >= 1.0x)")
    if "loradeck engine (fp32)" in results:
        print(f"  auto ({auto_dtype}) / fp32 = {ours / results['loradeck engine (fp32)']['tokens_per_s']:.2f}x"
              "   (target >= 1.25x on CPUs with native bf16)")
    if "loradeck, random batches" in results:
        random = results["loradeck, random batches"]
        print(f"  length-grouped / random batches = {ours / random['tokens_per_s']:.2f}x   (target >= 1.3x); "
              f"padding {results['loradeck engine (auto dtype)']['padding']:.0%} vs {random['padding']:.0%}; "
              f"mean loss {results['loradeck engine (auto dtype)']['loss']:.3f} vs {random['loss']:.3f}")
    if "plain SFTTrainer defaults" in results:
        print(f"  ours / TRL defaults = {ours / results['plain SFTTrainer defaults']['tokens_per_s']:.1f}x")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--workload", choices=("demo", "alpaca", "both"), default="both")
    parser.add_argument("--steps", type=int, default=6, help="steps per contender (the first is warm-up)")
    parser.add_argument("--trl-steps", type=int, default=3,
                        help="steps for TRL's defaults on the demo (slow where bf16 is emulated; 0 skips it)")
    args = parser.parse_args()
    from engine.library_output import route_library_output

    route_library_output(Path(tempfile.gettempdir()) / "loradeck-bench.log")
    print(f"CPU: {cpu_description()}", flush=True)
    from engine.models.loading import cpu_bf16_feature

    peaks = {"float32": matmul_peak_gflops("float32")}
    peaks["bfloat16"] = matmul_peak_gflops("bfloat16")
    print(f"matmul peak: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s"
          f"{'' if cpu_bf16_feature() else ' (emulated)'}", flush=True)
    workloads = ["demo", "alpaca"] if args.workload == "both" else [args.workload]
    for workload in workloads:
        if workload == "alpaca" and not ALPACA.is_file():
            print(f"alpaca: skipped ({ALPACA} is absent)")
            continue
        print(f"\n== {workload}", flush=True)
        run_workload(workload, args.model, args.steps, args.trl_steps if workload == "demo" else 0, peaks)


if __name__ == "__main__":
    main()
