"""Eval: did the fine-tune help? The run's latest before/after report, and a new one on request.

The report is written by `loradeck eval` in a child process (the TUI never
loads torch); its progress streams into a progress bar. Three tabs: the
before/after table with a bar per metric and the blind tally, the checkpoint
curve, and every prompt's answers side by side with the word diff.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from engine.eval.metrics import LOWER_IS_BETTER, METRIC_NAMES
from engine.data.prompts import question_of
from engine.eval.report import (CHECKPOINT_HEADER, COMPARED_METRICS, TABLE_HEADER, checkpoint_rows, comparison_rows,
                                format_value, latest_report, metric_value, read_answers)
from tui.child import ProgressChild
from tui.format import one_line, theme_rgb

BAR_WIDTH = 30


def metric_bars(report: dict[str, Any], label: str, colours: dict[str, str]) -> Text:
    """One pair of bars per metric, base above the adapter; shares on a 0–100% scale, loss against the larger."""
    text = Text()
    base, mine = report["models"]["base"], report["models"][label]
    width = max(len("base"), len(label))
    for name in COMPARED_METRICS:
        values = [metric_value(model, name) for model in (base, mine)]
        if any(v is None for v in values):
            continue
        scale = (max(values) or 1.0) if name in LOWER_IS_BETTER else 1.0
        text.append(f"{METRIC_NAMES[name]}{' (lower is better)' if name in LOWER_IS_BETTER else ''}\n", style="bold")
        for who, value, colour in (("base", values[0], "secondary"), (label, values[1], "primary")):
            filled = round(BAR_WIDTH * min(max(value / scale, 0.0), 1.0))
            text.append(f"  {who:<{width}} ")
            text.append("█" * filled, style=colours.get(colour, ""))
            text.append("░" * (BAR_WIDTH - filled), style="dim")
            text.append(f" {format_value(name, value)}\n")
    return text


def answer_text(row: dict[str, Any], label: str) -> str:
    """One model's answer to one prompt with its scores, as markup."""
    answer = row["answers"].get(label)
    if answer is None:
        return ""
    scores = answer.get("scores") or {}
    marks = []
    for name in ("answer", "format"):
        if scores.get(name) is not None:
            marks.append(f"{'✓' if scores[name] else '✗'} {METRIC_NAMES[name]}")
    for name in ("token_f1", "rouge_l"):
        if scores.get(name) is not None:
            marks.append(f"{METRIC_NAMES[name]} {scores[name]:.0%}")
    if scores.get("heldout_loss") is not None:
        marks.append(f"loss {scores['heldout_loss']:.3f}")
    return (f"[b]{escape(label)}[/b]  [$text-muted]{escape(' · '.join(marks))}[/]\n{escape(answer['text']) or '(empty)'}"
            + (f"\n[$text-muted](stopped at {answer['new_tokens']} tokens)[/]" if answer.get("stopped_by") == "length"
               else ""))


class EvalScreen(Screen):
    """A run's before/after report; r writes a new one."""

    BINDINGS = [
        Binding("r", "new_report", "New report"),
        Binding("m", "next_model", "Next adapter"),
        Binding("d", "diff", "Diff answers"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.report: dict[str, Any] | None = None
        self.answers: list[dict[str, Any]] = []
        self.label_index = 0
        self.child: ProgressChild | None = None
        self.title = f"loradeck · eval {self.run_dir.name}"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="eval-summary")
        yield ProgressBar(total=1.0, show_eta=False, id="eval-progress")
        with TabbedContent(id="eval-tabs"):
            with TabPane("Before / after", id="tab-table"):
                with VerticalScroll():
                    yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
                    yield Static("", id="eval-bars", classes="panel")
                    yield Static("", id="eval-blind", classes="panel")
            with TabPane("Checkpoints", id="tab-checkpoints"):
                with Vertical():
                    plot = PlotextPlot(id="eval-curve", classes="panel")
                    plot.border_title = "held-out loss by step"
                    yield plot
                    yield DataTable(id="eval-checkpoints", cursor_type="row", zebra_stripes=True)
            with TabPane("Answers", id="tab-answers"):
                with Horizontal():
                    yield DataTable(id="eval-prompts", cursor_type="row", zebra_stripes=True)
                    with VerticalScroll(id="eval-answer-scroll", classes="panel"):
                        yield Static("", id="eval-question")
                        with Horizontal(id="eval-sides"):
                            yield Static("", id="eval-answer-base", classes="eval-side")
                            yield Static("", id="eval-answer-adapter", classes="eval-side")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#eval-progress", ProgressBar).display = False
        self.load_latest()

    def on_unmount(self) -> None:
        if self.child is not None:
            self.child.stop()

    # ------------------------------------------------------------ the report on screen

    def load_latest(self) -> None:
        """Show the run's newest report, or say how to write one."""
        self.report = latest_report(self.run_dir)
        self.answers = read_answers(self.report["folder"]) if self.report else []
        self.label_index = 0
        self.redraw()

    @property
    def labels(self) -> list[str]:
        return [label for label in (self.report or {}).get("models", {}) if label != "base"]

    @property
    def label(self) -> str | None:
        labels = self.labels
        return labels[self.label_index % len(labels)] if labels else None

    def redraw(self) -> None:
        summary = self.query_one("#eval-summary", Static)
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        if self.report is None or self.label is None:
            summary.update(f"No report for {self.run_dir.name} yet. Press [b]r[/b] to write one: base and adapter "
                           "answer the held-out prompts, then both are scored and compared prompt by prompt.")
            for selector in ("#eval-bars", "#eval-blind", "#eval-question", "#eval-answer-base", "#eval-answer-adapter"):
                self.query_one(selector, Static).update("")
            self.query_one("#eval-prompts", DataTable).clear(columns=True)
            self.query_one("#eval-checkpoints", DataTable).clear(columns=True)
            return
        report, label = self.report, self.label
        others = f"   (m: {len(self.labels)} adapters)" if len(self.labels) > 1 else ""
        summary.update(f"[b]{escape(report['headline'])}[/b]{others}\n"
                       f"[$text-muted]{report['prompts']} prompts from {escape(Path(report['source']).name)} · greedy, "
                       f"{report['settings'].get('max_new_tokens', '?')} new tokens · {escape(report['created'])} · "
                       f"{escape(report['folder'])}/report.md[/]")
        for column in TABLE_HEADER:
            table.add_column(column.format(label=label))
        for row in comparison_rows(report, label):
            verdict = row[-1]
            style = {"better": "success", "worse": "error"}.get(verdict, "text-muted")
            table.add_row(*row[:-1], Text(verdict, style=self.app.theme_variables.get(style, "")))
        colours = self.app.theme_variables
        bars = self.query_one("#eval-bars", Static)
        bars.border_title = f"base vs {label}"
        bars.update(metric_bars(report, label, colours))
        blind = next((row for row in report.get("blind") or [] if row["challenger"] == label), None)
        blind_panel = self.query_one("#eval-blind", Static)
        blind_panel.border_title = "blind A/B rating: the quality signal"
        if blind:
            blind_panel.update(f"{escape(label)} wins {blind['wins']} · base wins {blind['losses']} · ties "
                               f"{blind['ties']} · both bad {blind['both_bad']}\n{escape(blind['verdict'])}\n"
                               f"[$text-muted]{escape(report['caveat'])}[/]")
        else:
            blind_panel.update("No blind ratings for this pair yet (t on Home opens the chat; b there rates blind).\n"
                               f"[$text-muted]{escape(report['caveat'])}[/]")
        self._draw_checkpoints()
        self._draw_prompts()

    def _draw_checkpoints(self) -> None:
        table = self.query_one("#eval-checkpoints", DataTable)
        table.clear(columns=True)
        plot = self.query_one("#eval-curve", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        rows = [row for row in (self.report or {}).get("checkpoints") or [] if row["step"] is not None]
        if not rows:
            plt.title("no checkpoints in this report: loradeck eval RUN --checkpoints")
            plot.refresh()
            table.display = False
            return
        table.display = True
        for column in CHECKPOINT_HEADER:
            table.add_column(column)
        for row in checkpoint_rows(self.report):
            table.add_row(*row)
        points = sorted({row["step"]: row["heldout_loss"] for row in rows if row["heldout_loss"] is not None}.items())
        base_loss = self.report["models"]["base"]["heldout_loss"]
        if points:
            plt.plot([p[0] for p in points], [p[1] for p in points], marker="braille",
                     color=theme_rgb(self.app.theme_variables.get("primary")), label="adapter")
            if base_loss is not None:
                plt.hline(base_loss, color=theme_rgb(self.app.theme_variables.get("secondary")))
        plt.xlabel("step")
        plt.title("held-out loss (line: base)")
        plot.refresh()

    def _draw_prompts(self) -> None:
        table = self.query_one("#eval-prompts", DataTable)
        table.clear(columns=True)
        label = self.label
        for column in ("#", "prompt", "base", "adapter"):  # the adapter's name is in the answer panel
            table.add_column(column)
        for row in self.answers:
            table.add_row(str(row["index"] + 1), one_line(question_of(row["prompt"]), 34),
                          self._marks(row, "base"), self._marks(row, label), key=str(row["index"]))
        self._show_answer(0)

    @staticmethod
    def _marks(row: dict[str, Any], label: str) -> str:
        scores = (row["answers"].get(label) or {}).get("scores") or {}
        marks = [("✓" if scores[name] else "✗") for name in ("answer", "format") if scores.get(name) is not None]
        return " ".join(marks) or "·"

    def _show_answer(self, position: int) -> None:
        """The prompt and its reference above the two answers, base on the left, side by side."""
        panels = [self.query_one(selector, Static)
                  for selector in ("#eval-question", "#eval-answer-base", "#eval-answer-adapter")]
        if not self.answers or self.label is None:
            for panel in panels:
                panel.update("")
            return
        row = self.answers[min(position, len(self.answers) - 1)]
        top = f"[b]{escape(question_of(row['prompt']))}[/b]"
        if row.get("reference") is not None:
            top += f"\n[$text-muted]reference[/]\n{escape(row['reference'])}"
        panels[0].update(top + "\n[$text-muted]d: word diff[/]")
        panels[1].update(answer_text(row, "base"))
        panels[2].update(answer_text(row, self.label))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "eval-prompts":
            self._show_answer(event.cursor_row)

    def action_next_model(self) -> None:
        if len(self.labels) > 1:
            self.label_index = (self.label_index + 1) % len(self.labels)
            self.redraw()

    def action_diff(self) -> None:
        from tui.screens.chat import DiffScreen

        if not self.answers or self.label is None:
            self.notify("no answers to compare yet: press r for a report", title="eval")
            return
        table = self.query_one("#eval-prompts", DataTable)
        row = self.answers[min(table.cursor_row, len(self.answers) - 1)]
        mine = row["answers"].get(self.label)
        if mine is None:
            self.notify(f"{self.label} has no answer to this prompt in the report", title="eval")
            return
        self.app.push_screen(DiffScreen("base", row["answers"]["base"]["text"], self.label, mine["text"]))

    # ------------------------------------------------------------ a new report

    def action_new_report(self) -> None:
        if self.child is not None and self.child.running:
            self.notify("a report is being written already", title="eval")
            return
        bar = self.query_one("#eval-progress", ProgressBar)
        bar.display = True
        bar.update(progress=0.0)
        self.query_one("#eval-summary", Static).update("writing a report: loading the models…")
        child = self.child = ProgressChild(self.eval_command())
        self.run_worker(lambda: child.run(self.app, self._progress, self._finished), thread=True,
                        exclusive=True, group="eval")

    def eval_command(self) -> list[str]:
        """The child process that writes the report (the real CLI)."""
        return [sys.executable, "-m", "tui.cli", "eval", str(self.run_dir), "--json", "--progress-json"]

    def _progress(self, update: dict[str, Any]) -> None:
        self.query_one("#eval-progress", ProgressBar).update(progress=float(update["fraction"]))
        self.query_one("#eval-summary", Static).update(f"writing a report: {escape(str(update.get('message', '')))}")

    def _finished(self, code: int, output: str, error: str) -> None:
        self.query_one("#eval-progress", ProgressBar).display = False
        if code != 0:
            message = error.removeprefix("loradeck: error: ") or f"loradeck eval exited with {code}"
            self.notify(message, title="eval failed", severity="error", timeout=10)
        self.load_latest()
