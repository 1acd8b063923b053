"""Training throughput, side by side in one run: loradeck's engine vs plain SFTTrainer defaults vs a hand loop.

Same base model (the bundled SmolLM2-135M-Instruct unless --model), same LoRA
(r16, all-linear), same demo rows, batch size 4. Each contender's first step
(warm-up, allocator growth) is excluded; tokens/s counts non-padding tokens.

    python bench/train_throughput.py [--steps 6] [--trl-steps 2] [--model NAME]

Targets (issue 3): ours >= 15x TRL's defaults on this CPU, >= 0.95x the hand loop.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH = 4


def demo_config(model: str, steps: int):
    from engine.config import load_config

    return load_config(REPO / "sample_data" / "configs" / "demo.toml", [
        f"model.name={model}", f"train.max_steps={steps}", f"train.batch_size={BATCH}", "train.save_every=0",
        "train.eval_every=0", "data.eval_path=", "data.eval_split=0", "probe.prompts=[]", "train.warmup_steps=0"])


def rows_in_engine_order(config, tokenizer, steps):
    """The exact rows, batch by batch, that our engine trains on, for the hand loop."""
    from engine.data.tokenize import prepare_data
    from engine.train.batches import EpochShuffleSampler

    data = prepare_data(config.data, tokenizer, config.train.seed)
    order = EpochShuffleSampler(len(data.train), config.train.seed).order(0)
    return [[{"input_ids": row.input_ids, "labels": row.labels}
             for row in (data.train[order[(index * BATCH + k) % len(order)]] for k in range(BATCH))]
            for index in range(steps)]


def bench_hand_loop(config, steps):
    import torch
    from peft import LoraConfig, get_peft_model

    from engine.models.loading import load_model, load_tokenizer
    from engine.train.batches import make_collator

    tokenizer = load_tokenizer(config.model.name)
    collate = make_collator(tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(load_model(config.model.name, device="cpu"),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    stamps = []  # (wall time at step end, tokens so far): collation counts, as in any real loop
    seen = 0
    for rows in rows_in_engine_order(config, tokenizer, steps):
        batch = collate(rows)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += int(batch["attention_mask"].sum())
        stamps.append((time.perf_counter(), seen))
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / (t1 - t0)


def bench_engine(config, steps):
    from engine.run.events import read_events
    from engine.train.run import run_training

    with tempfile.TemporaryDirectory() as folder:
        run_training(Path(folder) / "run", config)
        events = [e for e in read_events(Path(folder) / "run" / "events.jsonl") if e["type"] == "step"]
    # step events carry tokens seen and wall time; skip the first (warm-up) step
    first, last = events[0], events[-1]
    return (last["tokens_seen"] - first["tokens_seen"]) / (last["ts"] - first["ts"])


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
        args = SFTConfig(output_dir=folder, max_steps=steps, use_cpu=True, per_device_train_batch_size=BATCH, report_to="none",
                         include_num_input_tokens_seen="non_padding", disable_tqdm=True, save_strategy="no")
        trainer = SFTTrainer(model=load_model(config.model.name, device="cpu"), args=args, train_dataset=dataset,
                             processing_class=tokenizer,
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"),
                             callbacks=[Stamp()])
        print(f"  TRL defaults: bf16={args.bf16} gradient_checkpointing={args.gradient_checkpointing}", flush=True)
        trainer.train()
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6, help="steps for ours and the hand loop (first is warm-up)")
    parser.add_argument("--trl-steps", type=int, default=3, help="steps for TRL defaults (slow on CPU)")
    args = parser.parse_args()
    from engine.models.loading import quiet_transformers

    quiet_transformers()
    config = demo_config(args.model, args.steps)
    results = {}
    for name, function, steps in (("hand-written peft loop (fp32)", bench_hand_loop, args.steps),
                                  ("loradeck engine", bench_engine, args.steps),
                                  ("plain SFTTrainer defaults", bench_trl_defaults, args.trl_steps)):
        print(f"running {name} ({steps} steps)…", flush=True)
        results[name] = function(demo_config(args.model, steps), steps)
        print(f"  {results[name]:8.1f} tokens/s", flush=True)
    ours = results["loradeck engine"]
    print("\ntokens/s, same model, data, LoRA and batch size:")
    for name, value in results.items():
        print(f"  {name:32s} {value:8.1f}")
    print(f"\nours / hand loop       = {ours / results['hand-written peft loop (fp32)']:.2f}x   (target >= 0.95x)")
    print(f"ours / TRL defaults    = {ours / results['plain SFTTrainer defaults']:.1f}x   (target >= 15x on CPUs "
          "without native bf16)")


if __name__ == "__main__":
    main()
