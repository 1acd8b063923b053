"""Generation with a base model and any number of LoRA adapters over one copy of the base weights.

Adapters are loaded into one `PeftModel` under their own names and switched
with `set_adapter`; the base answers with every adapter disabled. Memory is
one base model plus the (small) adapter weights, however many panes compare.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from engine.errors import ModelError

BASE_LABEL = "base"


@dataclass
class GenerationSettings:
    """How answers are sampled. temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def resolve_adapter(path: str | Path) -> Path:
    """The PEFT adapter folder behind `path`.

    Accepts an adapter folder itself, a run directory (its final adapter, else its
    handoff bundle, else its newest checkpoint), or a handoff bundle.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"adapter '{path}': no such folder")
    if (folder / "adapter_config.json").is_file():
        return folder
    for candidate in (folder / "adapter", folder / "handoff"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    checkpoints = sorted((folder / "checkpoints").glob("step-*")) if (folder / "checkpoints").is_dir() else []
    for candidate in reversed(checkpoints):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ModelError(f"adapter '{path}': no adapter_config.json here — pass a PEFT adapter folder, a run directory "
                     "or a handoff bundle")


def adapter_label(path: Path, taken: set[str]) -> str:
    """A short unique pane label for an adapter: its run id or folder name."""
    parts = path.resolve().parts
    label = parts[-1]
    if label in ("adapter", "handoff") and len(parts) > 1:
        label = parts[-2]
    elif label.startswith("step-") and len(parts) > 2:
        label = f"{parts[-3]}@{label}"
    unique, n = label, 2
    while unique in taken or unique == BASE_LABEL:
        unique, n = f"{label}-{n}", n + 1
    return unique


class ChatModels:
    """A base model plus named adapters, generating for any label."""

    def __init__(self, base_name: str, adapters: list[str | Path] = (), *, load_in_4bit: bool = False,
                 dtype: str = "auto", device: str | None = None, progress=None):
        from engine.models import load_model, load_tokenizer

        kwargs = {"progress": progress} if progress else {}
        self.base_name = base_name
        self.tokenizer = load_tokenizer(base_name, **kwargs)
        self.model = load_model(base_name, load_in_4bit=load_in_4bit, dtype=dtype, device=device, **kwargs)
        self.model.eval()
        self.labels: list[str] = [BASE_LABEL]
        self.adapter_paths: dict[str, Path] = {}
        for adapter in adapters:
            self.add_adapter(adapter)

    def add_adapter(self, path: str | Path) -> str:
        """Load one more adapter under a new label; returns the label."""
        from peft import PeftModel

        folder = resolve_adapter(path)
        label = adapter_label(folder, set(self.labels))
        try:
            if not self.adapter_paths:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=label)
            else:
                self.model.load_adapter(str(folder), adapter_name=label)
        except (RuntimeError, ValueError, KeyError) as exc:
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            first = str(exc).strip().splitlines()[0][:160]
            raise ModelError(f"adapter '{path}' does not fit base model '{self.base_name}' "
                             f"(trained on {base!r}): {first}") from None
        self.model.eval()
        self.adapter_paths[label] = folder
        self.labels.append(label)
        return label

    def _prepare(self, label: str, messages: list[dict], settings: GenerationSettings):
        import torch

        if label not in self.labels:
            raise ModelError(f"unknown model label '{label}' — choose one of {', '.join(self.labels)}")
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
        device = next(self.model.parameters()).device
        encoded = {k: v.to(device) for k, v in encoded.items()}
        kwargs = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if settings.temperature > 0:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        torch.manual_seed(settings.seed)
        return encoded, kwargs

    def _adapter_context(self, label: str):
        import contextlib

        if not self.adapter_paths:
            return contextlib.nullcontext()
        if label == BASE_LABEL:
            return self.model.disable_adapter()
        self.model.set_adapter(label)
        return contextlib.nullcontext()

    def generate(self, label: str, messages: list[dict], settings: GenerationSettings | None = None) -> str:
        """The full answer of model `label` to a conversation."""
        import torch

        settings = settings or GenerationSettings()
        encoded, kwargs = self._prepare(label, messages, settings)
        with torch.inference_mode(), self._adapter_context(label):
            output = self.model.generate(**encoded, **kwargs)
        new_tokens = output[0][encoded["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    def stream(self, label: str, messages: list[dict], settings: GenerationSettings | None = None) -> Iterator[str]:
        """Yield the answer of model `label` piece by piece as tokens are generated."""
        import torch
        from transformers import TextIteratorStreamer

        settings = settings or GenerationSettings()
        encoded, kwargs = self._prepare(label, messages, settings)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode(), self._adapter_context(label):
                    self.model.generate(**encoded, **kwargs, streamer=streamer)
            except BaseException as exc:  # surfaced to the consumer below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failure:
            raise failure[0]
