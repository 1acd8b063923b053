"""`loradeck export` on the bundled model: stage times and bytes, and GGUF writing's memory against gguf's own
in-memory writer, measured side by side in one run.

    python bench/export_speed.py [ADAPTER]

ADAPTER is a PEFT adapter of the bundled SmolLM2-135M-Instruct (a run directory works too); by default a LoRA
with random weights (r 16, all linear layers) is made here, so the merge changes every projection. Ours streams
tensors from the merged safetensors into the GGUF file one at a time (`engine.export.gguf_file.write_gguf`).
Baseline: the same tensors handed to gguf's `GGUFWriter.add_tensor` and written with `write_tensors_to_file`,
the library's plain path, which holds every converted tensor until the end. Each runs in a fresh process; the
figure is its peak resident memory above what it held after imports, against the merged model's size.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LORADECK = [sys.executable, "-m", "tui.cli"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1")

WRITER = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import gguf, numpy, torch, safetensors  # imports first: the figure is what the writing adds
from engine.export import gguf_file
merged, target, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
if how == "ours":
    gguf_file.write_gguf(merged, target, "f16", name="bench")
else:
    config = json.loads((merged / "config.json").read_text())
    arch, permute = gguf_file.gguf_architecture(config)
    vocab = gguf_file.read_vocab(merged, config["vocab_size"])
    writer = gguf.GGUFWriter(target, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("bench")
    gguf_file._add_hyperparameters(writer, config, "MOSTLY_F16")
    gguf_file._add_tokenizer(writer, merged, vocab)
    for planned in gguf_file.plan_tensors(merged, config, "f16"):
        writer.add_tensor(planned.gguf_name, gguf_file._converted(planned, config, permute))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
seconds = time.monotonic() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"extra_bytes": (peak - before) * 1024, "seconds": seconds, "size": target.stat().st_size}}))
"""


def random_adapter(folder: Path) -> Path:
    """A LoRA of the bundled model with random A and B (PEFT zero-initialises B, which would merge nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.models.loading import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                            init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


def writer_memory(merged: Path, how: str, scratch: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", WRITER.format(repo=str(REPO)), str(merged),
                           str(scratch / f"{how}.gguf"), how], capture_output=True, text=True, env=ENV, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="loradeck-export-bench-"))
    if len(sys.argv) > 1:
        adapter = Path(sys.argv[1])
        extra = []
    else:
        print("making a random LoRA of the bundled model …", flush=True)
        adapter = random_adapter(scratch / "adapter")
        extra = ["--base", "smollm2-135m-instruct"]
    out = scratch / "export"
    command = LORADECK + ["export", str(adapter), "--out", str(out), "--gguf", "f16", "--gguf", "q8_0",
                          "--ollama", "bench-demo", "--name", "smollm2-bench", "--json", *extra]
    print("running", " ".join(command[2:]), flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        print(done.stderr[-2000:])
        return 1
    summary = json.loads(done.stdout)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"\n{cpu}, {os.cpu_count()} cores; bundled SmolLM2-135M-Instruct\n")
    print("stage                 seconds")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"  {stage:<20}{seconds:8.1f}")
    print("\nfile                            bytes")
    for entry in summary["files"]:
        print(f"  {entry['path']:<28}{entry['bytes']:>14,}")
    print("\nchecks")
    for check in summary["checks"]:
        if "max_abs_logit_diff" in check:
            print(f"  {check['check'][:58]:<60} same answers {check['same_answers']}/{check['answers']}, "
                  f"max |Δlogit| {check['max_abs_logit_diff']:.3g}, top-1 {check['top1_agreement']:.1%}")

    merged = out / "merged"
    merged_bytes = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    ours = writer_memory(merged, "ours", scratch)
    baseline = writer_memory(merged, "baseline", scratch)
    print(f"\nGGUF f16 writing, memory above imports (merged model {merged_bytes / 1e6:.0f} MB):")
    print(f"  ours (streaming)        {ours['extra_bytes'] / 1e6:8.0f} MB = {ours['extra_bytes'] / merged_bytes:.2f}x "
          f"the merged size, {ours['seconds']:.1f} s")
    print(f"  gguf add_tensor (plain) {baseline['extra_bytes'] / 1e6:8.0f} MB = "
          f"{baseline['extra_bytes'] / merged_bytes:.2f}x the merged size, {baseline['seconds']:.1f} s")
    print(f"  ratio ours / plain: {ours['extra_bytes'] / max(baseline['extra_bytes'], 1):.2f}x memory, "
          f"{ours['seconds'] / max(baseline['seconds'], 1e-9):.2f}x time; same bytes: "
          f"{ours['size'] == baseline['size']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
