"""`loradeck eval`: did the fine-tune help? A before/after report on held-out data."""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub) -> None:
    """The `eval` parser."""
    evaluate = sub.add_parser(
        "eval", help="before/after report on held-out data: loss, correctness, format, paired intervals",
        description="Answer the run's held-out prompts with the base model and each adapter (same greedy settings, "
                    "one copy of the base), then compare them prompt by prompt: held-out loss and perplexity, exact "
                    "match, token F1, ROUGE-L, chrF, correct answer found, format conformance, each with wins / "
                    "losses / ties and a 95% interval, plus the blind A/B tally. Writes RUN/eval/<time>/report.md, "
                    "report.json and answers.jsonl.")
    evaluate.add_argument("run", help="the run directory (its config, held-out data and adapter)")
    evaluate.add_argument("--adapter", "-a", action="append", default=[], metavar="DIR",
                          help="adapter to evaluate instead of the run's own: a run directory, checkpoint, handoff "
                               "bundle or PEFT folder (repeatable)")
    evaluate.add_argument("--prompts", default=None, metavar="FILE|RUN",
                          help="evaluate on these prompts instead: a dataset file (its answers are the references), "
                               "a .txt (one prompt per line: format and length only) or another run's held-out set")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N prompts (default: eval.limit)")
    evaluate.add_argument("--max-new-tokens", type=int, default=None,
                          help="tokens generated per answer (default: eval.max_new_tokens)")
    evaluate.add_argument("--batch-size", type=int, default=None,
                          help="answers per batched generate call (default: eval.batch_size)")
    evaluate.add_argument("--checkpoints", action="store_true",
                          help="also every checkpoint of the run: which step was best?")
    evaluate.add_argument("--base", "-m", default=None, help="base model (default: the run's)")
    evaluate.add_argument("--json", action="store_true", help="print report.json instead of the table")
    evaluate.add_argument("--progress-json", action="store_true", help=argparse.SUPPRESS)  # the TUI's progress bar


def _cmd_eval(args) -> int:
    from engine.eval.report import evaluate, plan_eval, render_terminal, write_report

    plan = plan_eval(args.run, adapters=args.adapter, prompts=args.prompts, limit=args.limit,
                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, checkpoints=args.checkpoints,
                     base=args.base)
    interactive = sys.stderr.isatty() and not args.progress_json
    last = [""]

    def progress(fraction: float, message: str) -> None:
        if args.progress_json:
            print(json.dumps({"fraction": round(fraction, 4), "message": message}), file=sys.stderr, flush=True)
            return
        line = f"{fraction:4.0%} {message}"
        if interactive:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
        elif message.split(":")[0] != last[0]:  # a log, not a progress bar: one line per stage
            print(line, file=sys.stderr, flush=True)
        last[0] = message.split(":")[0]

    print(f"evaluating {len(plan.adapters)} adapter{'s' if len(plan.adapters) != 1 else ''} and the base on "
          f"{len(plan.items)} prompts from {plan.source}", file=sys.stderr, flush=True)
    report, answers = evaluate(plan, progress=progress)
    if interactive:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    folder = write_report(plan.run_dir, report, answers)
    if args.json:
        print(json.dumps(dict(report, folder=str(folder)), indent=2, ensure_ascii=False))
    else:
        print(render_terminal(report), end="")
        print(f"\nreport: {folder / 'report.md'}\nanswers: {folder / 'answers.jsonl'}")
    return 0


COMMANDS = {"eval": _cmd_eval}
