"""Compare runs: their loss and eval-loss curves overlaid, and the config keys where they differ."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header
from textual_plotext import PlotextPlot

from engine.run.history import RunHistory
from tui.format import integer_ticks, one_line, run_labels, theme_rgb

LINE_VARIABLES = ("primary", "accent", "success", "secondary", "warning", "error")


def flat_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.toml as {"section.key": value}; {} when unreadable."""
    try:
        data = tomllib.loads((Path(run_dir) / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {f"{section}.{key}": value for section, values in data.items() if isinstance(values, dict)
            for key, value in values.items()}


def config_differences(run_dirs: list[str | Path]) -> list[tuple[str, list[Any]]]:
    """(key, value per run) for every config key whose value is not the same in all runs."""
    configs = [flat_config(d) for d in run_dirs]
    keys = sorted(set().union(*configs))
    missing = object()
    rows = []
    for key in keys:
        values = [c.get(key, missing) for c in configs]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, ["—" if v is missing else v for v in values]))
    return rows


class CompareScreen(Screen):
    """Two or more runs side by side."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_dirs: list[str | Path]):
        super().__init__()
        self.run_dirs = [str(d) for d in run_dirs]
        self.histories = [RunHistory(d) for d in self.run_dirs]
        # Set before mount: a title change after the Header mounts races screen switches.
        self.title = "loradeck · compare " + " vs ".join(h.summary.run_id for h in self.histories)

    def compose(self) -> ComposeResult:
        yield Header()
        plot = PlotextPlot(id="compare-plot", classes="panel")
        plot.border_title = "loss (lines) and eval loss (dots)"
        yield plot
        table = DataTable(id="config-diff", classes="panel", zebra_stripes=True)
        table.border_title = "config differences"
        yield table
        yield Footer()

    def on_mount(self) -> None:
        for history in self.histories:
            history.poll(budget_s=0.5 / len(self.histories))
        self._draw()
        if any(history.loading for history in self.histories):
            self.catch_up_timer = self.set_interval(0.5, self._catch_up)
        table = self.query_one("#config-diff", DataTable)
        table.add_column("key")
        for label in run_labels([h.summary.run_id for h in self.histories], 24):
            table.add_column(label)
        differences = config_differences(self.run_dirs)
        for key, values in differences:
            table.add_row(key, *(one_line(str(v), 28) for v in values))  # a long list must not hide the next run
        if not differences:
            table.add_row("(identical configs)", *("" for _ in self.histories))

    def _catch_up(self) -> None:
        """Read long logs in slices (keys keep answering), redrawing as they fill in."""
        loading = [history for history in self.histories if history.loading]
        for history in loading:
            history.poll(budget_s=0.25 / len(loading))
        self._draw()
        if not any(history.loading for history in self.histories):
            self.catch_up_timer.stop()

    def _draw(self) -> None:
        plot = self.query_one("#compare-plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        labels = run_labels([h.summary.run_id for h in self.histories])
        for index, history in enumerate(self.histories):
            colour = theme_rgb(self.app.theme_variables.get(LINE_VARIABLES[index % len(LINE_VARIABLES)]))
            name = labels[index]
            if len(history.loss):
                plt.plot(history.loss.steps, history.loss.values, label=name, marker="braille", color=colour)
            if len(history.eval_loss):
                plt.scatter(history.eval_loss.steps, history.eval_loss.values, marker="dot", color=colour)
        steps = [s for h in self.histories for s in (*h.loss.steps, *h.eval_loss.steps)]
        if steps:
            ticks = integer_ticks(min(steps), max(steps))
            plt.xticks(ticks, [str(t) for t in ticks])
        plt.xlabel("step")
        plot.refresh()
