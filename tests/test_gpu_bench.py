"""bench/gpu_throughput.py runs every contender's code on a tiny shape on the CPU, so a GPU session only has to
run it, not debug it."""

import argparse
import importlib.util

from tests.conftest import REPO


def test_the_gpu_bench_measures_each_contender_on_a_tiny_shape(default_model_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_throughput", REPO / "bench" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.build_model("tiny", tmp_path / "tiny")
    args = argparse.Namespace(shape="tiny", batch=2, max_length=128, steps=4, load_in_4bit=False,
                              checkpointing=False)
    for name in ("loradeck", "peft-loop", "trl-defaults"):
        result = bench.run_contender(name, args, model)
        assert "error" not in result, (name, result)
        assert result["tokens_per_s"] > 0 and result["mfu"] is None, (name, result)  # no GPU: MFU unknown
        if name == "loradeck":
            assert result["estimate"] > 0, "the engine's memory estimate, printed beside the measured peak"
