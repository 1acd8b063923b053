"""Dataset: the inspect report as panels, a length histogram, findings, and a sample browser showing the mask."""

from __future__ import annotations

import glob
import os

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.suggester import Suggester
from textual.widgets import DataTable, Footer, Header, Input, ProgressBar, Static
from textual_plotext import PlotextPlot

from tui.format import integer_ticks, short_path, theme_rgb

SEVERITY_VARIABLE = {"error": "error", "warning": "warning", "info": "primary"}


class PathSuggester(Suggester):
    """Completes file-system paths as you type (Tab or → accepts)."""

    def __init__(self):
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        matches = sorted(glob.glob(os.path.expanduser(value) + "*"))
        if not matches:
            return None
        match = matches[0] + ("/" if os.path.isdir(matches[0]) else "")
        return value + match[len(os.path.expanduser(value)):]


def summary_text(report) -> str:
    """The report's headline figures for the summary panel."""
    p = report.percentiles()
    total = report.tokens_trained + report.tokens_masked
    share = f" ({report.tokens_trained / total:.0%})" if total else ""
    return "\n".join([
        f"[b]{report.format}[/b] — {report.format_reason}",
        f"{report.rows:,} rows: {report.train_rows:,} train / {report.eval_rows:,} held out",
        f"template {report.model}, max_length {report.max_length}",
        f"tokens trained {report.tokens_trained:,}{share}, masked {report.tokens_masked:,}",
        "lengths " + "  ".join(f"{k} {v:,}" for k, v in p.items()),
        f"truncated {len(report.truncated_rows):,}   untrained {len(report.untrained_rows):,}"])


def sample_text(segments, colours: dict[str, str]) -> Text:
    """Trained tokens highlighted, masked tokens dimmed, cut-off tokens struck through."""
    styles = {"trained": f"bold {colours.get('success', 'green')}",
              "masked": f"dim {colours.get('foreground', '')}",
              "cut": f"strike {colours.get('error', 'red')}"}
    text = Text()
    for segment in segments:
        text.append(segment.text, style=styles[segment.kind])
    return text


class DatasetScreen(Screen):
    """Inspect a dataset before training on it."""

    BINDINGS = [
        Binding("[", "sample(-1)", "Prev sample"),
        Binding("]", "sample(1)", "Next sample"),
        Binding("n", "next_finding_row", "Next row of finding"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, path: str = "", model: str = "smollm2-135m-instruct", max_length: int = 1024,
                 split: dict | None = None):
        super().__init__()
        self.initial_path = path
        self.model = model
        self.max_length = max_length
        self.split = split or {}  # eval_path / eval_split / seed / system_prompt: the held-out rule training uses
        self.report = None
        self.tokenizer = None
        self.index = 0
        self.finding_rows: list[int] = []
        self.sample_rich = Text()
        self.title = "loradeck · dataset"

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="dataset-bar"):
            yield Input(self.initial_path, placeholder="path to a .json/.jsonl/.csv/.parquet file (Enter inspects)",
                        suggester=PathSuggester(), id="dataset-path")
            max_length = Input(str(self.max_length), placeholder="max_length", type="integer",
                               id="dataset-max-length",
                               tooltip="data.max_length: tokens kept per sample (Enter re-inspects)")
            max_length.border_title = "max_length"
            yield max_length
        yield ProgressBar(total=100, show_eta=False, id="dataset-progress")
        with Horizontal(id="dataset-body"):
            with Vertical(id="dataset-left"):
                summary = Static("Enter a path and press Enter.", id="dataset-summary", classes="panel")
                summary.border_title = "summary"
                yield summary
                plot = PlotextPlot(id="dataset-histogram", classes="panel")
                plot.border_title = "token lengths (| = max_length)"
                yield plot
                findings = DataTable(id="dataset-findings", classes="panel", cursor_type="row")
                findings.border_title = "findings (Enter: show rows)"
                yield findings
            with VerticalScroll(id="dataset-sample", classes="panel") as sample:
                sample.border_title = "sample"
                yield Static("", id="sample-text")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#dataset-findings", DataTable)
        for column in ("severity", "rows", "finding"):  # counts before the long titles: never pushed off-screen
            table.add_column(column, key=column)
        if self.initial_path:
            self.start(self.initial_path)

    @on(Input.Submitted, "#dataset-path")
    def submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.start(event.value.strip())

    @on(Input.Submitted, "#dataset-max-length")
    def max_length_submitted(self, event: Input.Submitted) -> None:
        """A new max_length: the same file inspected again, truncation and histogram cut moved."""
        try:
            value = int(event.value)
        except ValueError:
            value = 0
        if not 16 <= value <= 1_048_576:
            self.notify("max_length is a whole number of tokens, 16 or more", title="dataset", severity="warning")
            return
        self.max_length = value
        path = self.query_one("#dataset-path", Input).value.strip()
        if path:
            self.start(path)

    def start(self, path: str) -> None:
        self.query_one("#dataset-summary", Static).update(f"inspecting {short_path(path)}…")
        self.query_one("#dataset-progress", ProgressBar).update(progress=0)
        self.inspect(path)

    @work(thread=True, exclusive=True, group="inspect")
    def inspect(self, path: str) -> None:
        from engine.errors import LoradeckError
        from engine.data.inspect import inspect_dataset
        from engine.models.loading import load_tokenizer

        def progress(stage: str, fraction: float) -> None:
            self.app.call_from_thread(self.query_one("#dataset-progress", ProgressBar).update,
                                      progress=round(fraction * 100))
        try:
            if self.tokenizer is None:
                self.tokenizer = load_tokenizer(self.model, progress=lambda message: None)
            report = inspect_dataset(path, self.tokenizer, model_name=self.model, max_length=self.max_length,
                                     progress=progress, **self.split)
        except LoradeckError as exc:
            self.app.call_from_thread(self.query_one("#dataset-summary", Static).update, f"[$error]{exc}[/]")
            return
        self.app.call_from_thread(self.show_report, report)

    def show_report(self, report) -> None:
        self.report = report
        verdict = {"error": "$error", "warning": "$warning"}.get(report.worst(), "$success")
        summary = self.query_one("#dataset-summary", Static)
        summary.update(summary_text(report))
        summary.border_title = f"summary · [{verdict}]{report.worst()}[/]"
        self._draw_histogram()
        table = self.query_one("#dataset-findings", DataTable)
        table.clear()
        colours = self.app.theme_variables
        for index, finding in enumerate(report.findings):
            table.add_row(Text(finding.severity, style=colours.get(SEVERITY_VARIABLE[finding.severity], "")),
                          Text(f"{finding.count:,}", justify="right"), f"{finding.title}", key=str(index))
        if not report.findings:
            table.add_row("ok", "", "no findings: the data looks clean", key="none")
        self.index = 0
        self.show_sample()
        table.focus()  # the path input would swallow the browsing keys

    def _draw_histogram(self) -> None:
        plot = self.query_one("#dataset-histogram", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        buckets = self.report.histogram(bins=16)
        filled = [((low + high) / 2, count) for low, high, count in buckets if count]
        colours = self.app.theme_variables
        plt.bar([x for x, _ in filled], [c for _, c in filled], width=0.9, color=theme_rgb(colours.get("primary")))
        plt.xlim(0, buckets[-1][1] if buckets else self.report.max_length)
        most = max((c for _, c in filled), default=1)
        plt.ylim(0, most)
        plt.yticks(integer_ticks(0, most, 4))  # rows are counted: 0, 28, 56, 84 — never 27.5
        # Explicit ticks: plotext's own choice varies with redraw timing; these name the filled buckets.
        ticks = [x for x, _ in filled] + [self.report.max_length]
        plt.xticks(ticks, [f"{int(x)}" for x in ticks[:-1]] + [f"max {self.report.max_length}"])
        plt.vline(self.report.max_length, color=theme_rgb(colours.get("error")))
        longer, longest = self.report.outliers()
        plt.xlabel("tokens after the chat template"
                   + (f" · {longer} longer not drawn (up to {longest:,})" if longer else ""))
        plot.refresh()

    def show_sample(self) -> None:
        if not self.report or not self.report.conversations:
            return
        from engine.data.inspect import mask_segments

        self.index %= len(self.report.conversations)
        conversation = self.report.conversations[self.index]
        number = conversation.source.number if conversation.source else self.index + 1
        segments = mask_segments(self.tokenizer, conversation, self.report.max_length, self.report.train_on)
        self.sample_rich = sample_text(segments, self.app.theme_variables)
        self.query_one("#sample-text", Static).update(self.sample_rich)
        panel = self.query_one("#dataset-sample")
        panel.border_title = (f"record {number} of {self.report.rows} · trained highlighted, masked dimmed, "
                              "cut struck")

    def action_sample(self, step: int) -> None:
        if self.report:
            self.index += step
            self.show_sample()

    def show_record(self, number: int) -> None:
        """Jump the sample browser to a record number (1-based, as findings list them)."""
        for index, conversation in enumerate(self.report.conversations):
            if (conversation.source.number if conversation.source else index + 1) == number:
                self.index = index
                self.show_sample()
                return

    @on(DataTable.RowSelected, "#dataset-findings")
    def finding_selected(self, event: DataTable.RowSelected) -> None:
        if not self.report or event.row_key.value == "none":
            return
        finding = self.report.findings[int(event.row_key.value)]
        self.finding_rows = list(finding.rows)
        self.notify(f"{finding.title}: records {finding.examples()} — n shows the next", title=finding.severity)
        self.action_next_finding_row()

    def action_next_finding_row(self) -> None:
        if self.finding_rows:
            number = self.finding_rows.pop(0)
            self.finding_rows.append(number)
            self.show_record(number)
