"""LoRA / QLoRA training throughput on a GPU: loradeck vs a plain peft loop vs TRL's SFTTrainer, side by side.

Builds a real-shaped, randomly initialised Llama locally (no download: speed and
memory depend on the shapes, not on the weight values) with the bundled SmolLM2
tokenizer, and trains LoRA r16 on all linear layers over the alpaca demo
(`../shared/datasets/real/alpaca_en_demo.json`, else the bundled demo data).
Each contender runs in its own process, so peak memory is its own:

- loradeck          the engine as users run it (packing auto: on with CUDA, chunked loss, no fp32 upcast);
- loradeck-padded   the engine with `train.packing=off` (length-grouped padded batches);
- peft-loop         a hand-written peft + torch loop, random padded batches, the model's own loss;
- trl-defaults      TRL `SFTTrainer` with `SFTConfig` defaults (gradient checkpointing on);
- trl-padding-free  TRL with `padding_free=True` (where it runs).

Prints real (non-padding) tokens/s (median over the steps after the first 3),
model FLOPs utilisation against the card's dense peak (— when unknown, e.g. on
a CPU), peak allocated and reserved CUDA memory, and each contender's speed
relative to loradeck.

    python bench/gpu_throughput.py --shape smollm2-1.7b --batch 16 --max-length 1024 --steps 30
    python bench/gpu_throughput.py --shape llama-3.1-8b --load-in-4bit --batch 2 --max-length 2048 --checkpointing
    python bench/gpu_throughput.py --shape tiny --steps 5                 # a CPU dry run of every code path
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Published shapes (config.json of HuggingFaceTB/SmolLM2-1.7B and meta-llama/Llama-3.1-8B).
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0,
                         tie_word_embeddings=True, vocab_size=49152),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
                         tie_word_embeddings=False, vocab_size=128256),
}
CONTENDERS = ("loradeck", "loradeck-padded", "peft-loop", "trl-defaults", "trl-padding-free")
ALPACA = REPO.parent / "shared" / "datasets" / "real" / "alpaca_en_demo.json"
WARMUP_STEPS = 3


def build_model(shape: str, folder: Path) -> Path:
    """A random Llama of the named shape, saved with the SmolLM2 tokenizer (built on the GPU when there is one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.models.loading import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct", progress=lambda m: None))
    fields = {"vocab_size": len(tokenizer), **SHAPES[shape]}
    config = LlamaConfig(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def engine_config(args, model: Path, run_overrides: list[str]):
    from engine.config import load_config

    data = ALPACA if ALPACA.is_file() else REPO / "sample_data" / "demo_train.jsonl"
    return load_config(REPO / "sample_data" / "configs" / "demo.toml", [
        f"model.name={model}", f"data.path={data}", f"data.max_length={args.max_length}",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", "train.grad_accum=1",
        "train.save_every=0", "train.eval_every=0", "data.eval_path=", "data.eval_split=0", "probe.prompts=[]",
        "train.warmup_steps=0", "lora.r=16", "lora.alpha=32", "lora.target_modules=all-linear",
        f"model.load_in_4bit={str(args.load_in_4bit).lower()}",
        f"train.gradient_checkpointing={str(args.checkpointing).lower()}", *run_overrides])


def cuda_peaks() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated": None, "peak_reserved": None}
    return {"peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved()}


def run_engine(args, model: Path, packing: str) -> dict:
    from engine.run.events import read_events
    from engine.train.run import run_training

    with tempfile.TemporaryDirectory() as tmp:
        config = engine_config(args, model, [f"train.packing={packing}"])
        code = run_training(Path(tmp) / "run", config)
        events = read_events(Path(tmp) / "run" / "events.jsonl")
    if code:
        error = next((e["message"] for e in events if e["type"] == "error"), f"exit {code}")
        return {"error": error}
    steps = [e for e in events if e["type"] == "step"][WARMUP_STEPS:] or [e for e in events if e["type"] == "step"]
    loaded = next(e for e in events if e["type"] == "model_loaded")
    mfus = [e["mfu"] for e in steps if e.get("mfu") is not None]
    return {"tokens_per_s": statistics.median(e["tokens_per_s"] for e in steps if e.get("tokens_per_s")),
            "mfu": statistics.median(mfus) if mfus else None,
            "padding": statistics.median(e["padding"] for e in steps if e.get("padding") is not None),
            "note": loaded.get("packing_reason"), "estimate": loaded.get("step_memory_estimate"), **cuda_peaks()}


def training_rows(args, model: Path):
    """The tokenized rows the engine would train on (same template, mask and truncation) for the other loops."""
    from engine.data.tokenize import prepare_data
    from engine.models.loading import load_tokenizer

    config = engine_config(args, model, [])
    tokenizer = load_tokenizer(str(model))
    return prepare_data(config.data, tokenizer, 0).train, tokenizer


def utilisation(model, tokens_per_s: float, tokens_per_row: float) -> float | None:
    import torch

    from engine.run.telemetry import dense_peak_flops, lora_flops_per_token, model_flops_utilisation

    if not torch.cuda.is_available():
        return None
    total = model.get_nb_trainable_parameters()[1]
    config = model.get_base_model().config
    return model_flops_utilisation(tokens_per_s, lora_flops_per_token(total, config.num_hidden_layers,
                                                                      config.hidden_size, tokens_per_row),
                                   dense_peak_flops(torch.cuda.get_device_name(0)))


def load_plain_model(args, model_dir: Path):
    """(model, device, dtype) the way a user loads it with transformers alone: bf16 on CUDA, NF4 when asked."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype) \
        if args.load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, quantization_config=quantization,
                                                 device_map={"": device})
    return model, device, dtype


def run_peft_loop(args, model_dir: Path) -> dict:
    import random

    import torch
    from peft import LoraConfig, get_peft_model

    from engine.train.batches import make_collator

    rows, tokenizer = training_rows(args, model_dir)
    base, device, dtype = load_plain_model(args, model_dir)
    if args.checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    base.config.use_cache = False
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    collate = make_collator(tokenizer.pad_token_id)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    rates, lengths = [], []
    for step in range(args.steps):
        batch_rows = [rows[order[(step * args.batch + k) % len(order)]] for k in range(args.batch)]
        batch = {k: v.to(device) for k, v in collate([{"input_ids": r.input_ids, "labels": r.labels}
                                                      for r in batch_rows]).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        real = sum(len(r.input_ids) for r in batch_rows)
        rates.append(real / (time.perf_counter() - started))
        lengths.append(real / len(batch_rows))
    measured = rates[WARMUP_STEPS:] or rates
    speed = statistics.median(measured)
    return {"tokens_per_s": speed, "mfu": utilisation(model, speed, statistics.mean(lengths)), **cuda_peaks()}


def run_trl(args, model_dir: Path, padding_free: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows, tokenizer = training_rows(args, model_dir)
    model, device, _ = load_plain_model(args, model_dir)
    stamps: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, arguments, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), state.num_input_tokens_seen))

    dataset = Dataset.from_dict({"input_ids": [r.input_ids for r in rows], "completion_mask":
                                 [[int(label != -100) for label in r.labels] for r in rows]})
    # padding-free TRL refuses a max_length it would not enforce: the rows are already truncated to it
    extra = {"padding_free": True, "max_length": None} if padding_free else {"max_length": args.max_length}
    config = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps, per_device_train_batch_size=args.batch,
                       report_to="none", logging_steps=1, save_strategy="no",
                       include_num_input_tokens_seen="non_padding" if not padding_free else "all",
                       use_cpu=device == "cpu", bf16=device == "cuda", disable_tqdm=True, **extra)
    try:
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"), callbacks=[Timer()])
        trainer.train()
    except Exception as exc:  # a mode this TRL/attention combination does not run: reported, not fatal
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"}
    rates = [(tokens - previous_tokens) / (now - previous) for (previous, previous_tokens), (now, tokens)
             in zip(stamps, stamps[1:])][WARMUP_STEPS - 1:]
    speed = statistics.median(rates) if rates else 0.0
    return {"tokens_per_s": speed, "mfu": utilisation(trainer.model, speed, statistics.mean(len(r.input_ids)
                                                                                            for r in rows)),
            **cuda_peaks()}


def run_contender(name: str, args, model: Path) -> dict:
    """One contender in this process: its figures as a dict."""
    if name == "loradeck":
        return run_engine(args, model, "auto")
    if name == "loradeck-padded":
        return run_engine(args, model, "off")
    if name == "peft-loop":
        return run_peft_loop(args, model)
    return run_trl(args, model, padding_free=name == "trl-padding-free")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="smollm2-1.7b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--model", type=Path, help="a model folder already built (skips building one)")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # run one contender here and print its JSON
    args = parser.parse_args()
    if args.only:
        print("RESULT " + json.dumps(run_contender(args.only, args, args.model)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        model = args.model or build_model(args.shape, Path(tmp) / args.shape)
        results = {}
        for name in args.contenders.split(","):
            command = [sys.executable, __file__, "--only", name, "--model", str(model), "--shape", args.shape,
                       "--batch", str(args.batch), "--max-length", str(args.max_length), "--steps", str(args.steps)]
            command += ["--load-in-4bit"] * args.load_in_4bit + ["--checkpointing"] * args.checkpointing
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            results[name] = json.loads(line[7:]) if line else {"error": (done.stderr.strip().splitlines() or
                                                                         ["no output"])[-1][:160]}
            print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA)"
    print(f"{args.shape}{' NF4' if args.load_in_4bit else ''} LoRA r16 all-linear, batch {args.batch} × "
          f"{args.max_length}, {'checkpointing, ' if args.checkpointing else ''}{args.steps} steps on {device}")
    base = (results.get("loradeck") or {}).get("tokens_per_s")
    print(f"{'contender':18} {'tok/s':>9} {'MFU':>6} {'peak alloc':>11} {'peak resv':>10} {'loradeck ÷ it':>14}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name:18} did not run: {result['error']}")
            continue
        gigabytes = lambda value: f"{value / 2**30:.1f} GiB" if value else "—"  # noqa: E731
        mfu = f"{result['mfu'] * 100:.1f}%" if result.get("mfu") is not None else "—"
        ratio = f"{base / result['tokens_per_s']:.2f}×" if base and result.get("tokens_per_s") else "—"
        print(f"{name:18} {result['tokens_per_s']:9.1f} {mfu:>6} {gigabytes(result.get('peak_allocated')):>11} "
              f"{gigabytes(result.get('peak_reserved')):>10} {ratio:>14}")
    for name in ("loradeck", "loradeck-padded"):  # the preflight's estimate against what the step really took
        estimate, peak = (results.get(name) or {}).get("estimate"), (results.get(name) or {}).get("peak_allocated")
        if estimate and peak:
            print(f"{name}: memory estimate {estimate / 2**30:.1f} GiB vs peak allocated {peak / 2**30:.1f} GiB "
                  f"({estimate / peak:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
