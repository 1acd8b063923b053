"""`loradeck export`: the adapter as a merged model, GGUF files and an Ollama Modelfile, each checked."""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub) -> None:
    """The `export` parser."""
    export = sub.add_parser(
        "export", help="merged HF folder, GGUF files and an Ollama Modelfile, each loaded back and checked",
        description="Merge the adapter into its un-quantized base and save it (merged/), write GGUF files in pure "
                    "Python (no llama.cpp build), translate the chat template into an Ollama Modelfile, then load "
                    "every file back with plain transformers and compare its answers and logits with the model it "
                    "came from. EXPORT.md lists the files and every check.")
    export.add_argument("source", help="a run directory (its final adapter, else handoff, else newest checkpoint), "
                                       "a checkpoint, a handoff bundle or a PEFT adapter folder")
    export.add_argument("--out", "-o", required=True, metavar="DIR", help="folder to write (new, empty, or an "
                                                                          "earlier export's)")
    export.add_argument("--gguf", action="append", default=[], metavar="TYPE",
                        help="GGUF file to write: f16, q8_0, q4_0, q4_1, q5_0, q5_1, bf16, f32 (K-quants such as "
                             "q4_k_m when llama-quantize is on PATH); repeatable")
    export.add_argument("--ollama", default=None, metavar="NAME", help="also write a Modelfile for `ollama create "
                                                                        "NAME`")
    export.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                        help="merged weights' dtype (default: the base model's)")
    export.add_argument("--base", "-m", default=None, help="base model (default: the run's)")
    export.add_argument("--name", default=None, help="file name stem for the GGUF files (default: the run's name)")
    export.add_argument("--check-prompts", type=int, default=4, metavar="N",
                        help="held-out prompts each file answers in its check (default 4)")
    export.add_argument("--json", action="store_true", help="print export.json instead of the summary")
    export.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)  # the TUI's progress bars


def _cmd_export(args) -> int:
    from engine.export.pipeline import run_export
    from engine.export.plan import plan_export
    from engine.config import format_bytes
    from engine.export.report import check_line, export_summary, ollama_command

    plan = plan_export(args.source, args.out, gguf_types=args.gguf, ollama=args.ollama, dtype=args.dtype,
                       base=args.base, name=args.name, check_prompts=args.check_prompts)
    interactive = sys.stderr.isatty() and not args.progress_json
    last = [""]

    def progress(stage: str, fraction: float, message: str) -> None:
        if args.progress_json:
            print(json.dumps({"stage": stage, "fraction": round(fraction, 4), "message": message}),
                  file=sys.stderr, flush=True)
            return
        filled = int(fraction * 20)
        line = f"{stage:<14} [{'#' * filled}{'.' * (20 - filled)}] {message}"
        if interactive:
            print(f"\r\033[K{line[:160]}", end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
        elif stage != last[0] or fraction >= 1:  # a log, not a progress bar: a line per stage start and end
            print(line, file=sys.stderr, flush=True)
        last[0] = stage

    types = ", ".join(plan.gguf_types) or "no GGUF"
    print(f"exporting {plan.adapter} on {plan.base} → {plan.out} (merged {plan.dtype}; {types}"
          f"{'; Modelfile' if plan.ollama else ''})", file=sys.stderr, flush=True)
    result = run_export(plan, progress)
    summary = export_summary(result)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        for entry in result.files:
            print(f"wrote {plan.out}/{entry['path']}  ({format_bytes(entry['bytes'])})")
        for check in result.checks:
            print(check_line(check))
        print(f"report: {plan.out / 'EXPORT.md'}")
        if result.modelfile is not None:
            print(f"next: {ollama_command(result)}")
    if result.failed:
        print(f"loradeck: export check failed: {result.failed[0]['check']} — see {plan.out / 'EXPORT.md'}",
              file=sys.stderr)
        return 1
    return 0


COMMANDS = {"export": _cmd_export}
