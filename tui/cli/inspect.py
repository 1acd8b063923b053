"""`loradeck inspect`: lint a dataset against the model's chat template before training."""

from __future__ import annotations

import sys


def add_parsers(sub) -> None:
    """The `inspect` parser."""
    inspect = sub.add_parser("inspect", help="lint a dataset against the model's chat template before training",
                             description="Load a dataset exactly as training would (format, chat template, loss "
                                         "mask, truncation) and report lengths, trained tokens and problems. Exits 1 "
                                         "when a finding is an error.")
    inspect.add_argument("dataset", help="a .json/.jsonl/.csv/.parquet file or a datasets.save_to_disk folder")
    inspect.add_argument("--model", "-m", default=None, help="whose tokenizer and chat template to use "
                         "(default: the config's, else smollm2-135m-instruct)")
    inspect.add_argument("--max-length", type=int, default=None, help="tokens per sample (default: the config's, 1024)")
    inspect.add_argument("--format", default="auto", help="data format (default: detect)")
    inspect.add_argument("--json", action="store_true", help="the whole report, machine-readable")
    inspect.add_argument("--fix", metavar="OUT", default=None,
                         help="write a cleaned copy (.jsonl/.json): exact duplicates, empty answers and untrainable "
                              "rows removed; the original is never modified")


def _cmd_inspect(args) -> int:
    import json

    from engine.config import DEFAULT_MODEL, load_config
    from engine.data.inspect import inspect_dataset, write_fixed_copy
    from engine.library_output import leave_bitsandbytes_unimported
    from engine.models.loading import load_tokenizer

    leave_bitsandbytes_unimported()  # a tokenizer is all inspect loads

    config = load_config(args.config) if args.config else None
    model = args.model or (config.model.name if config else DEFAULT_MODEL)
    max_length = args.max_length or (config.data.max_length if config else 1024)
    report = inspect_dataset(args.dataset, model_name=model, max_length=max_length, data_format=args.format,
                             load_tokenizer=lambda: load_tokenizer(model, progress=lambda message: print(
                                 message, file=sys.stderr)),
                             eval_split=config.data.eval_split if config else 0.1,
                             eval_path=config.data.eval_path if config else "",
                             seed=config.train.seed if config else 42,
                             system_prompt=config.data.system_prompt if config else "")
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print("\n".join(format_inspect_report(report)))
    if args.fix:
        for line in write_fixed_copy(args.dataset, report, args.fix, args.format):
            print(f"fix: {line}", file=sys.stderr if args.json else sys.stdout)
    return 1 if report.worst() == "error" else 0


def format_inspect_report(report, width: int = 80) -> list[str]:
    """The inspect report as plain lines that fit `width` columns."""
    import textwrap

    from tui.format import short_path

    percentiles = report.percentiles()
    total = report.tokens_trained + report.tokens_masked
    share = f" ({report.tokens_trained / total:.0%} of tokens)" if total else ""
    lines = [f"dataset    {short_path(report.path)}",
             f"format     {report.format} ({report.format_reason})",
             f"rows       {report.rows:,} ({report.train_rows:,} train / {report.eval_rows:,} held out)",
             f"template   {report.model}, max_length {report.max_length}",
             f"tokens     {report.tokens_trained:,} trained{share}, {report.tokens_masked:,} masked",
             "lengths    " + "  ".join(f"{k} {v:,}" for k, v in percentiles.items()),
             f"truncated  {len(report.truncated_rows):,} samples longer than max_length"]
    if report.preference is not None:
        pairs, bias = report.preference, report.preference.get("length_bias")
        lengths = (f"; chosen {bias['chosen_mean']:.0f} vs rejected {bias['rejected_mean']:.0f} {bias['unit']} on "
                   f"average, chosen longer in {bias['chosen_longer']:.0%}") if bias else ""
        lines += textwrap.wrap(f"pairs      {pairs['pairs']:,} for DPO, {pairs['identical']:,} identical{lengths}",
                               width, subsequent_indent=" " * 11)
    lines += ["", "token lengths after the chat template:"]
    histogram = report.histogram()
    peak = max((count for _, _, count in histogram), default=0) or 1
    bar_room = width - 32
    for low, high, count in histogram:
        cut = "  ◀ max_length" if low < report.max_length <= high else ""
        bar = "█" * max(1 if count else 0, round(count / peak * bar_room))
        lines.append(f"  {low:>6,}–{high:<6,} {count:>7,} {bar}{cut}"[:width + len(cut)])
    longer, longest = report.outliers()
    if longer:
        lines.append(f"  {longer:,} longer row{'s' if longer != 1 else ''} not drawn (up to {longest:,} tokens)")
    for note in report.notes:
        lines += textwrap.wrap(f"note: {note}", width)
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in ("error", "warning", "info")}
    lines += ["", f"findings   {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info"
              if report.findings else "findings   none — the data looks clean"]
    for finding in report.findings:
        head = f"  {finding.severity.upper():<8}{finding.title}: {finding.count:,}"
        lines += textwrap.wrap(head, width, subsequent_indent=" " * 10)
        lines += textwrap.wrap(f"records {finding.examples()}", width, initial_indent=" " * 10,
                               subsequent_indent=" " * 10)
        lines += textwrap.wrap(f"→ {finding.advice}", width, initial_indent=" " * 10, subsequent_indent=" " * 12)
    return lines


COMMANDS = {"inspect": _cmd_inspect}
