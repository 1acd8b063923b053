"""Home: the runs under the runs folder, and what a new run would start from."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui.format import format_duration, format_number, short_path

RUN_COLUMNS = ("run", "status", "step", "loss", "eval", "time left", "model")


class HomeScreen(Screen):
    """Runs table plus the configured model and dataset."""

    BINDINGS = [("r", "refresh_runs", "Refresh")]
    REFRESH_SECONDS = 2.0

    def __init__(self, runs_dir: Path, config_path: str | None):
        super().__init__()
        self.runs_dir = runs_dir
        self.config_path = config_path

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="home-body"):
            with Vertical(id="runs-panel", classes="panel") as runs_panel:
                runs_panel.border_title = f"Runs · {self.runs_dir}"
                yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
                yield Static("", id="runs-empty")
            with Vertical(id="side-panel"):
                setup = Static(self._setup_text(), id="setup-panel", classes="panel")
                setup.border_title = "New run starts from"
                yield setup
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        for column in RUN_COLUMNS:
            table.add_column(column, key=column)
        self.action_refresh_runs()
        self.set_interval(self.REFRESH_SECONDS, self.action_refresh_runs)

    def _setup_text(self) -> str:
        from engine.config import load_config
        from engine.errors import LoradeckError

        try:
            config = load_config(self.config_path)
        except LoradeckError as exc:
            return f"[b]config error[/b]\n{exc}"
        source = self.config_path or "built-in defaults"
        return (f"config   {source}\n"
                f"model    {config.model.name}{' (4-bit)' if config.model.load_in_4bit else ''}\n"
                f"dataset  {short_path(config.data.path)}\n"
                f"LoRA     r={config.lora.r} alpha={config.lora.alpha}\n"
                f"backend  {config.backend.name}")

    def _status_text(self, status: str) -> Text:
        """The status word coloured from the active theme (DataTable cells take Rich styles, not $variables)."""
        colour = self.app.theme_variables.get(STATUS_THEME_VARIABLE.get(status, "text-muted"))
        return Text(status, style=colour or "")

    def action_refresh_runs(self) -> None:
        """Re-read the runs folder and redraw the table, keeping the cursor."""
        from engine.rundir import list_runs

        table = self.query_one("#runs-table", DataTable)
        runs = list_runs(self.runs_dir)
        cursor = table.cursor_row
        table.clear()
        now = time.time()
        for run in runs:
            left = None
            if run.deadline_at and run.status == "running":
                left = run.deadline_at - now
            steps = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            table.add_row(run.run_id, self._status_text(run.status), steps,
                          format_number(run.loss), format_number(run.eval_loss), format_duration(left),
                          run.model or "—", key=run.path)
        if runs:
            table.move_cursor(row=min(cursor, len(runs) - 1))
        empty = self.query_one("#runs-empty", Static)
        empty.display = not runs
        empty.update(f"No runs in {self.runs_dir}/ yet. Start one with\n"
                     "  loradeck train sample_data/configs/demo.toml")


STATUS_THEME_VARIABLE = {"running": "primary", "finished": "success", "failed": "error", "lost": "error",
                         "deadline": "warning", "stopped": "warning"}
