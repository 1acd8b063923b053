"""Did the fine-tune help? Before/after reports on held-out data: loss, reference metrics, format, paired intervals.

`report.evaluate_run` is what `loradeck eval`, the trainer's `eval.after_training`
and the TUI's Eval screen run; `metrics` scores one answer, `paired` says whether a
difference over prompts is real.
"""
