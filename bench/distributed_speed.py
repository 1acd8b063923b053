"""Several processes, side by side in one run: the demo trained by 1 process, 2 DDP processes and 2 FSDP processes.

Each contender is the real command (`loradeck train sample_data/configs/demo.toml --foreground`), the same rows
and the same global batch (1 x batch 4, 2 x batch 2), run one after the other. Printed per contender: real
tokens/s (the step events' own figure, the first steps left out as warm-up), the median step time, and the
communication share of a step: the collectives that strategy performs every step (DDP: an all-reduce of the
LoRA gradients; FSDP: all-gathers of every weight for the forward and again for the backward, and a
reduce-scatter of the LoRA gradients), timed on their own over the same backend with the same byte counts, over
the measured step time.

On a CPU the processes share its cores, so expect little or no gain from a second process (that is reported,
not hidden); the figure a GPU user compares is the communication share. Without CUDA, FSDP runs through the test
shim (tests/fsdp_on_cpu) that lets accelerate shard over CPU processes.

    python bench/distributed_speed.py [--steps 12] [--model NAME] [--skip-fsdp]
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

SHIM = REPO / "tests" / "fsdp_on_cpu"
WARM_UP_STEPS = 2


def train(run_dir: Path, model: str, steps: int, processes: int, batch: int, strategy: str, cuda: bool) -> list[dict]:
    """The real command; returns the run's events."""
    sets = [f"model.name={model}", f"train.max_steps={steps}", f"train.batch_size={batch}", "train.log_every=1",
            "train.save_every=0", "train.eval_every=0", "probe.prompts=[]", "data.eval_split=0",
            "data.eval_path=", f"distributed.processes={processes}", f"distributed.strategy={strategy}"]
    env = dict(os.environ)
    if strategy == "fsdp" and not cuda:
        env["PYTHONPATH"] = str(SHIM)
    command = [sys.executable, "-m", "tui.cli", "train", str(REPO / "sample_data" / "configs" / "demo.toml"),
               "--run-dir", str(run_dir), "--foreground", *[arg for item in sets for arg in ("--set", item)]]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{processes} x {strategy} failed: {result.stderr.strip()[-500:]}")
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def speed(events: list[dict]) -> tuple[float, float, int, int]:
    """(real tokens/s, median step seconds, trainable parameters, total parameters) after the warm-up steps."""
    steps = [e for e in events if e["type"] == "step" and e["step"] > WARM_UP_STEPS]
    loaded = next(e for e in events if e["type"] == "model_loaded")
    times = [e["ts"] for e in events if e["type"] == "step"]
    step_seconds = statistics.median(b - a for a, b in zip(times, times[1:]))
    tokens = (steps[-1]["tokens_seen"] - steps[0]["tokens_seen"]) / max(steps[-1]["ts"] - steps[0]["ts"], 1e-9)
    return tokens, step_seconds, loaded["trainable_params"], loaded["total_params"]


def _time_collectives(rank: int, world: int, port: int, plan: dict, out: str) -> None:
    import warnings

    import torch
    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch renames these collectives, same operation
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if plan["cuda"] else "gloo"
    device = torch.device(f"cuda:{rank}") if plan["cuda"] else torch.device("cpu")
    if plan["cuda"]:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    results = {}
    for name, (kind, elements, dtype) in plan["collectives"].items():
        dtype = getattr(torch, dtype)
        if kind == "all_reduce":
            tensor = torch.ones(elements, dtype=dtype, device=device)
            run = lambda: dist.all_reduce(tensor)  # noqa: E731
        elif kind == "all_gather":
            shard = torch.ones(elements // world, dtype=dtype, device=device)
            whole = torch.empty(shard.numel() * world, dtype=dtype, device=device)
            run = lambda: dist.all_gather_into_tensor(whole, shard)  # noqa: E731
        else:
            whole = torch.ones(elements // world * world, dtype=dtype, device=device)
            shard = torch.empty(elements // world, dtype=dtype, device=device)
            run = lambda: dist.reduce_scatter_tensor(shard, whole)  # noqa: E731
        run()
        dist.barrier()
        started, repeats = time.perf_counter(), 5
        for _ in range(repeats):
            run()
        if plan["cuda"]:
            torch.cuda.synchronize()
        results[name] = (time.perf_counter() - started) / repeats
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def collective_seconds(collectives: dict, cuda: bool) -> dict[str, float]:
    """Seconds per call of each (kind, elements, dtype) collective between 2 processes on this backend."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        mp.spawn(_time_collectives, args=(2, port, {"cuda": cuda, "collectives": collectives}, out.name), nprocs=2)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--skip-fsdp", action="store_true")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.device_count() >= 2
    device = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda else
              f"CPU, {os.cpu_count()} cores (the processes share them)")
    print(f"device: {device}; backend {'nccl' if cuda else 'gloo'}; model {args.model}; {args.steps} steps, "
          f"global batch 4, the first {WARM_UP_STEPS} steps left out")
    contenders = [("1 process", 1, 4, "ddp"), ("2 x DDP", 2, 2, "ddp")]
    if not args.skip_fsdp:
        contenders.append(("2 x FSDP", 2, 2, "fsdp"))
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        for label, processes, batch, strategy in contenders:
            started = time.monotonic()
            events = train(Path(scratch) / label.replace(" ", ""), args.model, args.steps, processes, batch,
                           strategy, cuda)
            figures[label] = speed(events)
            print(f"  ran {label} in {time.monotonic() - started:.0f}s", flush=True)
    _, _, trainable, total = figures["1 process"]
    weight_dtype = "bfloat16" if cuda else "float32"
    collectives = {"lora_grad_all_reduce": ("all_reduce", trainable, "float32"),
                   "weights_all_gather": ("all_gather", total, weight_dtype),
                   "lora_grad_reduce_scatter": ("reduce_scatter", trainable, "float32")}
    timed = collective_seconds(collectives, cuda)
    communication = {"2 x DDP": timed["lora_grad_all_reduce"],
                     "2 x FSDP": 2 * timed["weights_all_gather"] + timed["lora_grad_reduce_scatter"]}
    base_tokens = figures["1 process"][0]
    print(f"\n{'contender':<11} {'tok/s':>8} {'vs 1':>6} {'step':>8} {'comm/step':>10} {'comm share':>11}")
    for label, (tokens, step_s, _, _) in figures.items():
        comm = communication.get(label)
        print(f"{label:<11} {tokens:>8.0f} {tokens / base_tokens:>5.2f}x {step_s:>7.2f}s "
              f"{f'{comm * 1000:.1f} ms' if comm is not None else '—':>10} "
              f"{f'{comm / step_s:.1%}' if comm is not None else '—':>11}")
    print(f"\nper step: DDP all-reduces {trainable * 4 / 1e6:.1f} MB of LoRA gradients; FSDP all-gathers "
          f"{total * (2 if cuda else 4) / 1e6:.0f} MB of weights twice and reduce-scatters the gradients")


if __name__ == "__main__":
    main()
