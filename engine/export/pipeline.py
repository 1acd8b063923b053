"""The export, stage by stage: merge, check the merged folder, write and check each GGUF, the Modelfile, the
report. Every stage reports progress and its time; every file written is checked before the report calls it good.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.errors import ModelError
from engine.export.checks import Behaviour, behaviour, compare, prompt_ids
from engine.export.gguf_file import PYTHON_TYPES, llama_quantize, write_gguf
from engine.export.ollama import modelfile_text
from engine.export.plan import DTYPES, ExportPlan, export_tokenizer
from engine.library_output import library_stderr

StageProgress = Callable[[str, float, str], None]  # (stage, fraction of that stage, message)
QLORA_NOTE = ("the run trained on 4-bit (QLoRA) weights; the adapter is merged into the full-precision base "
              "instead, because rounding the merged weights back to 4 bits would erase most of the adapter's small "
              "update")
QUANTIZED_PREFERENCE = ("q4_k_m", "q5_k_m", "q8_0", "q6_k", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k_s", "q5_k_s",
                        "q3_k_m", "q2_k")


@dataclass
class ExportResult:
    """What was written and what every check measured (export.json holds the same)."""

    plan: ExportPlan
    files: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    modelfile: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [check for check in self.checks if not check["passed"]]


def _compare_dtype(plan: ExportPlan):
    """float32 for the checks when it fits comfortably in memory (the tightest comparison), else the export's."""
    import psutil
    import torch

    if plan.parameters * 4 < psutil.virtual_memory().available * 0.4:
        return torch.float32
    return getattr(torch, DTYPES[plan.dtype])


def _device_for(plan: ExportPlan, dtype) -> str:
    """The GPU when the model fits in 80% of its free memory at `dtype`, else the CPU: a 16 GB card that trained
    an 8B model in 4 bits cannot hold it merged in fp16, and the merge and checks run in RAM instead."""
    import torch

    from engine.models.loading import best_device

    device = best_device()
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if plan.parameters * torch.finfo(dtype).bits // 8 > 0.8 * free:
            return "cpu"
    return device


def _check_base_fingerprint(plan: ExportPlan, model) -> None:
    from engine.models.fingerprint import base_fingerprint, same_base
    from engine.run.paths import STATE_FILE

    state_file = plan.adapter / STATE_FILE
    if not state_file.is_file():
        return
    try:
        recorded = json.loads(state_file.read_text(encoding="utf-8")).get("base_model") or {}
    except (OSError, ValueError):
        return
    if recorded and not same_base(recorded, base_fingerprint(model, plan.base)):
        raise ModelError(f"{plan.adapter}: this adapter was trained on {recorded.get('name')!r}, not on "
                         f"{plan.base!r} — pass --base with the model it was trained on")


def _free() -> None:
    """Give memory back once the caller has dropped its models."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _merge(plan: ExportPlan, result: ExportResult, progress: StageProgress) -> tuple[Behaviour, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.models.loading import quiet_transformers

    quiet_transformers()
    dtype = getattr(torch, DTYPES[plan.dtype])
    device = _device_for(plan, dtype)
    if plan.trained_4bit:
        result.notes.append(QLORA_NOTE)
        progress("merge", 0.0, QLORA_NOTE)
    progress("merge", 0.05, f"loading {plan.base} in {plan.dtype}")
    base = AutoModelForCausalLM.from_pretrained(plan.base_folder, dtype=dtype)
    base.to(device)
    _check_base_fingerprint(plan, base)
    progress("merge", 0.35, f"applying the adapter {plan.adapter.name}")
    try:
        model = PeftModel.from_pretrained(base, plan.adapter)
    except (RuntimeError, ValueError, KeyError) as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{plan.adapter}: this adapter does not fit the base {plan.base!r} ({detail}) — pass --base "
                         "with the model it was trained on") from None
    model.eval()
    tokenizer = export_tokenizer(plan.adapter, plan.base_folder)
    ids = prompt_ids(tokenizer, plan.prompts)
    progress("merge", 0.5, f"answering {len(ids)} check prompts with base + adapter (unmerged)")
    unmerged = behaviour(model, tokenizer, plan.prompts, format_regex=plan.format_regex, token_ids=ids)
    progress("merge", 0.7, "merging the adapter into the weights")
    merged = model.merge_and_unload()
    in_memory = behaviour(merged, tokenizer, plan.prompts, format_regex=plan.format_regex, token_ids=ids)
    numbers = compare(unmerged, in_memory)
    result.checks.append(dict(numbers, check="merged weights = base + adapter (PEFT), same prompts",
                              file="merged/", dtype=plan.dtype,
                              passed=numbers["top1_agreement"] >= 0.99))
    progress("merge", 0.85, f"saving merged/ ({plan.dtype} safetensors)")
    tmp = plan.out / ".merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="4GB")
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(plan.merged, ignore_errors=True)
    tmp.rename(plan.merged)
    progress("merge", 1.0, "merged/ written")
    del model, merged, base
    _free()
    return unmerged, tokenizer


def _check_merged_folder(plan: ExportPlan, result: ExportResult, unmerged: Behaviour, tokenizer,
                         progress: StageProgress) -> Behaviour:
    """Load merged/ the way a user would (plain transformers, nothing of ours) and answer the check prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("check merged", 0.1, "loading merged/ with plain transformers")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(plan.merged)
    same_ids = prompt_ids(reloaded_tokenizer, plan.prompts) == unmerged.token_ids
    dtype = _compare_dtype(plan)
    model = AutoModelForCausalLM.from_pretrained(plan.merged, dtype=dtype).to(_device_for(plan, dtype)).eval()
    progress("check merged", 0.5, "answering the check prompts")
    reference = behaviour(model, reloaded_tokenizer, plan.prompts, format_regex=plan.format_regex,
                          token_ids=unmerged.token_ids)
    numbers = compare(unmerged, reference)
    formatted = [ok for ok in reference.format_ok if ok is not None]
    check = dict(numbers, check="merged/ loaded by plain transformers vs base + adapter", file="merged/",
                 tokenizer_same_ids=same_ids, passed=same_ids and numbers["top1_agreement"] >= 0.99)
    if formatted:
        check["format_conformance"] = f"{sum(formatted)}/{len(formatted)}"
    result.checks.append(check)
    progress("check merged", 1.0, f"same answers {numbers['same_answers']}/{numbers['answers']}")
    del model
    _free()
    return reference


def _check_gguf(plan: ExportPlan, result: ExportResult, path: Path, type_name: str, reference: Behaviour,
                progress: StageProgress) -> None:
    """Load the GGUF back with transformers (`gguf_file=`) and compare it with merged/ on the check prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = f"check {type_name}"
    progress(stage, 0.05, f"loading {path.name} back with transformers (tokenizer)")
    with library_stderr():  # its de-quantization bar would tear through ours
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    same_ids = prompt_ids(tokenizer, plan.prompts) == reference.token_ids
    progress(stage, 0.4, f"loading {path.name} back with transformers (weights)")
    dtype = _compare_dtype(plan)
    with library_stderr():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=dtype).to(_device_for(plan, dtype)).eval()
    progress(stage, 0.7, "answering the check prompts")
    got = behaviour(model, tokenizer, plan.prompts, format_regex=plan.format_regex, token_ids=reference.token_ids)
    numbers = compare(reference, got)
    exact = type_name in ("f32", "f16", "bf16")
    passed = same_ids and (numbers["same_answers"] == numbers["answers"] if exact else True)
    check = dict(numbers, check=f"{path.name} loaded back by transformers vs merged/", file=path.name,
                 tokenizer_same_ids=same_ids, passed=passed,
                 expectation="same greedy answers" if exact else "loads and answers; the difference is reported")
    formatted = [ok for ok in got.format_ok if ok is not None]
    if formatted:
        check["format_conformance"] = f"{sum(formatted)}/{len(formatted)}"
    check["sample_answer"] = got.answers[0] if got.answers else ""
    result.checks.append(check)
    progress(stage, 1.0, f"same answers {numbers['same_answers']}/{numbers['answers']}, "
                         f"max logit difference {numbers['max_abs_logit_diff']:.3g}")
    del model
    _free()


def _record_file(result: ExportResult, path: Path, kind: str) -> None:
    from engine.run.space import folder_bytes

    size = folder_bytes(path) if path.is_dir() else path.stat().st_size
    result.files.append({"path": path.name + ("/" if path.is_dir() else ""), "kind": kind, "bytes": size})


def _timed(result: ExportResult, stage: str):
    class Timer:
        def __enter__(self):
            self.started = time.monotonic()

        def __exit__(self, *exc):
            result.stages[stage] = round(time.monotonic() - self.started, 2)
            return False

    return Timer()


def modelfile_gguf(plan: ExportPlan) -> str:
    """The GGUF the Modelfile points at: the first quantized type asked for (what Ollama users run), else the first."""
    for type_name in QUANTIZED_PREFERENCE:
        if type_name in plan.gguf_types:
            return plan.gguf_path(type_name).name
    return plan.gguf_path(plan.gguf_types[0]).name


def run_export(plan: ExportPlan, progress: StageProgress | None = None) -> ExportResult:
    """Merge, write and check every file of `plan`, then EXPORT.md and export.json. Files are written under
    temporary names and renamed when complete; an earlier export in the same folder is replaced file by file."""
    from engine.export.report import write_report

    progress = progress or (lambda stage, fraction, message: None)
    result = ExportResult(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    for stale in ("EXPORT.md", "export.json"):  # a half-done re-export must not look finished
        (plan.out / stale).unlink(missing_ok=True)
    started = time.monotonic()
    with _timed(result, "merge"):
        unmerged, tokenizer = _merge(plan, result, progress)
    _record_file(result, plan.merged, f"merged HF folder ({plan.dtype} safetensors)")
    with _timed(result, "check merged"):
        reference = _check_merged_folder(plan, result, unmerged, tokenizer, progress)
    helper_f16 = None
    for type_name in plan.gguf_types:
        path = plan.gguf_path(type_name)
        with _timed(result, f"gguf {type_name}"):
            if type_name in PYTHON_TYPES:
                write_gguf(plan.merged, path, type_name, name=plan.name,
                           progress=lambda fraction, message, t=type_name: progress(f"gguf {t}", fraction, message))
            else:
                source = plan.gguf_path("f16")
                if not source.is_file():
                    helper_f16 = source
                    write_gguf(plan.merged, source, "f16", name=plan.name)
                progress(f"gguf {type_name}", 0.5, f"llama-quantize {type_name.upper()}")
                llama_quantize(source, path, type_name)
                progress(f"gguf {type_name}", 1.0, f"{path.name} written")
        _record_file(result, path, f"GGUF {type_name}")
        with _timed(result, f"check {type_name}"):
            _check_gguf(plan, result, path, type_name, reference, progress)
    if helper_f16 is not None and "f16" not in plan.gguf_types:
        helper_f16.unlink(missing_ok=True)
    if plan.ollama is not None:
        with _timed(result, "modelfile"):
            target = plan.out / "Modelfile"
            target.write_text(modelfile_text(modelfile_gguf(plan), plan.ollama), encoding="utf-8")
            result.modelfile = target
            result.checks.append({"check": f"Modelfile TEMPLATE ({plan.ollama.style}) renders the probe "
                                           "conversations exactly as the model's chat template", "file": "Modelfile",
                                  "probes": plan.ollama.checked, "passed": True})
            progress("modelfile", 1.0, "Modelfile written")
        _record_file(result, target, "Ollama Modelfile")
    result.stages["total"] = round(time.monotonic() - started, 2)
    write_report(result)
    progress("report", 1.0, "EXPORT.md written")
    return result
