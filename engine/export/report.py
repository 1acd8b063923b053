"""EXPORT.md and export.json: what an export wrote and every check with its numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engine.config import format_bytes


def check_line(check: dict[str, Any]) -> str:
    """One check in words, with its numbers."""
    mark = "ok" if check["passed"] else "FAILED"
    if "probes" in check:
        compared = sum(1 for probe in check["probes"] if "equal" in probe)
        return f"[{mark}] {check['check']} ({compared} conversations compared)"
    parts = [f"same greedy answers {check['same_answers']}/{check['answers']}",
             f"top-1 token agreement {check['top1_agreement']:.1%}",
             f"max |logit difference| {check['max_abs_logit_diff']:.3g}"]
    if "tokenizer_same_ids" in check:
        parts.append("tokenizer: same token ids" if check["tokenizer_same_ids"] else "tokenizer: DIFFERENT token ids")
    if check.get("format_conformance"):
        parts.append(f"format conformance {check['format_conformance']}")
    return f"[{mark}] {check['check']}: " + ", ".join(parts)


def export_summary(result) -> dict[str, Any]:
    """export.json's content."""
    plan = result.plan
    return {
        "adapter": str(plan.adapter), "run": str(plan.run_dir) if plan.run_dir else None, "base": plan.base,
        "trained_4bit": plan.trained_4bit, "dtype": plan.dtype, "name": plan.name,
        "files": result.files, "checks": result.checks, "stage_seconds": result.stages, "notes": result.notes,
        "check_prompts": [item.text for item in plan.prompts],
        "ollama": {"name": plan.ollama_name, "style": plan.ollama.style, "system": plan.ollama.system,
                   "stops": plan.ollama.stops} if plan.ollama else None,
        "passed": not result.failed,
    }


def ollama_command(result) -> str | None:
    """The command that registers the Modelfile with Ollama."""
    if result.modelfile is None:
        return None
    return f"ollama create {result.plan.ollama_name} -f {result.modelfile}"


def render_markdown(result) -> str:
    """EXPORT.md."""
    plan = result.plan
    lines = [f"# Export of {plan.name}", "",
             f"- adapter: `{plan.adapter}`", f"- base model: `{plan.base}`",
             f"- merged in: {plan.dtype}" + (" (the run trained on 4-bit QLoRA weights)" if plan.trained_4bit else "")]
    lines += [f"- note: {note}" for note in result.notes]
    lines += ["", "## Files", "", "| file | what | size |", "|---|---|---|"]
    lines += [f"| `{f['path']}` | {f['kind']} | {format_bytes(f['bytes'])} |" for f in result.files]
    lines += ["", "## Checks", "",
              f"Each file was loaded back with plain transformers and answered the same {len(plan.prompts)} "
              "prompts greedily as the model it came from; logits are compared over every prompt token.", ""]
    lines += [f"- {check_line(check)}" for check in result.checks]
    answers = [c for c in result.checks if c.get("sample_answer")]
    if answers:
        lines += ["", f"First check prompt: {plan.prompts[0].text!r}", ""]
        lines += [f"- `{c['file']}` answered: {c['sample_answer'].strip()[:200]!r}" for c in answers]
    lines += ["", "## Use it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"model = AutoModelForCausalLM.from_pretrained({str(plan.merged)!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({str(plan.merged)!r})", "```"]
    ggufs = [f["path"] for f in result.files if f["path"].endswith(".gguf")]
    if ggufs:
        lines += ["", "With llama.cpp:", "", "```", f"llama-cli -m {plan.out / ggufs[0]} -cnv", "```"]
    if result.modelfile is not None:
        lines += ["", f"With Ollama ({plan.ollama.style} template, stops {', '.join(plan.ollama.stops)}):", "",
                  "```", ollama_command(result), f"ollama run {plan.ollama_name}", "```"]
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in result.stages.items()]
    return "\n".join(lines) + "\n"


def write_report(result) -> Path:
    """Write export.json then EXPORT.md (last: its presence means the export finished)."""
    out = result.plan.out
    for name, text in (("export.json", json.dumps(export_summary(result), indent=2, ensure_ascii=False)),
                       ("EXPORT.md", render_markdown(result))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return out / "EXPORT.md"
