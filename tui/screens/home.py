"""Home: the runs under the runs folder, and what a new run would start from."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from engine.run.history import RunHistory
from tui.format import format_duration, format_number, short_path

RUN_COLUMNS = ("", "run", "status", "step", "loss", "eval", "time left", "model", "last report")


def model_label(run) -> str:
    """The runs table's model column: the base, and the method when it is not plain SFT."""
    model = run.model or "—"
    return f"{model} · DPO" if run.method == "dpo" else model


class HomeScreen(Screen):
    """Runs table plus the configured model and dataset."""

    BINDINGS = [
        Binding("enter", "open_run", "Open", priority=True),
        Binding("n", "new_run", "New run"),
        Binding("space", "mark_run", "Mark"),
        Binding("c", "compare_runs", "Compare marked"),
        Binding("d", "dataset", "Dataset"),
        Binding("t", "chat", "Chat"),
        Binding("v", "eval_report", "Eval"),
        Binding("x", "export_run", "Export"),
        Binding("r", "refresh_runs", "Refresh"),
    ]
    REFRESH_SECONDS = 2.0

    def __init__(self, runs_dir: Path, config_path: str | None):
        super().__init__()
        self.runs_dir = runs_dir
        self.config_path = config_path
        self.histories: dict[str, RunHistory] = {}
        self.marked: set[str] = set()
        self.headlines: dict[str, tuple[float, str]] = {}  # run -> (its eval folder's mtime, last report's headline)

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
                report = Static("", id="report-panel", classes="panel")
                report.border_title = "Last eval report"
                yield report
        yield Footer()

    NARROW = 100  # below this many columns the runs table takes the whole width

    def on_resize(self, event) -> None:
        """On a small terminal (80×24) the runs table comes first: the side panels step aside and the footer
        packs its keys closer."""
        narrow = event.size.width < self.NARROW
        self.query_one("#side-panel").display = not narrow
        self.query_one(Footer).compact = narrow

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        for column in RUN_COLUMNS:
            table.add_column(column, key=column)
        self.action_refresh_runs()
        self.set_interval(self.REFRESH_SECONDS, self._refresh_if_visible)
        # Status colours are read from the theme when a row is drawn, so a theme switch redraws the rows.
        self.app.theme_changed_signal.subscribe(self, lambda theme: self.action_refresh_runs())

    def _refresh_if_visible(self) -> None:
        if self.is_current:  # a monitor on top does its own polling; Home catches up when shown again
            self.action_refresh_runs()

    def on_screen_resume(self) -> None:
        self.action_refresh_runs()

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

    def _histories(self) -> list[RunHistory]:
        """Every run under the runs folder, each followed incrementally (new bytes only), newest first."""
        if self.runs_dir.is_dir():
            for child in self.runs_dir.iterdir():
                key = str(child)
                if key not in self.histories and child.is_dir() and (child / "events.jsonl").is_file():
                    self.histories[key] = RunHistory(child, curves=False)
        for key in [k for k in self.histories if not Path(k).is_dir()]:
            del self.histories[key]
        for history in self.histories.values():
            history.poll()
        return sorted(self.histories.values(), key=lambda h: h.summary.started_at or 0, reverse=True)

    def action_refresh_runs(self) -> None:
        """Fold new events of every run in and redraw the table, keeping the cursor."""
        table = self.query_one("#runs-table", DataTable)
        histories = self._histories()
        cursor = table.cursor_row
        table.clear()
        now = time.time()
        for history in histories:
            run = history.summary
            steps = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            mark = "●" if run.path in self.marked else " "
            table.add_row(mark, run.run_id, self._status_text(run.status), steps, format_number(run.loss),
                          format_number(run.eval_loss), format_duration(history.time_left(now)), model_label(run),
                          self._headline(run.path), key=run.path)
        if histories:
            table.move_cursor(row=min(cursor, len(histories) - 1))
        self._show_report_headline()
        empty = self.query_one("#runs-empty", Static)
        empty.display = not histories
        empty.update(f"No runs in {self.runs_dir}/ yet. Press n for a new run, or\n"
                     "  loradeck train sample_data/configs/demo.toml")

    def _headline(self, run_dir: str) -> str:
        """The last eval report's headline, re-read only when the run's eval folder changes."""
        from engine.eval.report import latest_report
        from engine.run.paths import RunPaths

        try:
            stamp = RunPaths(Path(run_dir)).eval_reports.stat().st_mtime
        except OSError:
            return "—"
        cached = self.headlines.get(run_dir)
        if cached is None or cached[0] != stamp:
            report = latest_report(run_dir)
            headline = report["headline"].split(": ", 1)[-1] if report else "—"
            cached = self.headlines[run_dir] = (stamp, headline)
        return cached[1]

    def _show_report_headline(self) -> None:
        """The selected run's last report headline beside the table (the column may be scrolled out of view)."""
        run = self._cursor_run()
        panel = self.query_one("#report-panel", Static)
        if run is None:
            panel.update("")
            return
        headline = self._headline(run)
        panel.update(f"{Path(run).name}\n{headline}\n[$text-muted]v opens it[/]" if headline != "—" else
                     f"{Path(run).name}: no report yet\n[$text-muted]v, then r writes one (or loradeck eval RUN)[/]")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "runs-table":
            self._show_report_headline()

    def _cursor_run(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def action_open_run(self) -> None:
        run = self._cursor_run()
        if run:
            self.app.open_run(run)

    def action_mark_run(self) -> None:
        run = self._cursor_run()
        if run:
            self.marked ^= {run}
            self.action_refresh_runs()

    def action_compare_runs(self) -> None:
        runs = sorted(self.marked)
        if len(runs) < 2:
            self.notify("mark two or more runs with space, then press c", title="compare")
            return
        from tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen(runs))

    def action_dataset(self) -> None:
        """Inspect the selected run's dataset, else the configured one."""
        from engine.config import load_config
        from engine.errors import LoradeckError
        from engine.run.paths import recorded_data_path
        from tui.screens.dataset import DatasetScreen

        run = self._cursor_run()
        run_config = Path(run) / "config.toml" if run else None
        try:  # the selected run's own settings, else the configured ones
            config = load_config(run_config if run_config and run_config.is_file() else self.config_path)
        except LoradeckError:
            config = load_config(None)
        recorded = recorded_data_path(run) if run else None
        path = str(recorded) if recorded else config.data.path
        if path and not Path(path).exists():
            path = ""
        eval_path = recorded_data_path(run, "eval_path") if run else None
        eval_path = str(eval_path) if eval_path else config.data.eval_path
        split = {"eval_path": eval_path if eval_path and Path(eval_path).exists() else "",
                 "eval_split": config.data.eval_split, "seed": config.train.seed,
                 "system_prompt": config.data.system_prompt}
        self.app.push_screen(DatasetScreen(short_path(path) if path else "", config.model.name,
                                           config.data.max_length, split))

    def action_chat(self) -> None:
        """Chat with the selected run's adapter beside its base model (the base alone when it has none yet); a DPO
        run is rated again, blind, against the adapter it started from."""
        from engine.chat.rating import rate_again_plan
        from engine.models.adapters import resolve_adapter
        from engine.errors import LoradeckError

        run = self._cursor_run()
        adapters = []
        if run:
            try:
                resolve_adapter(run)
                adapters = [run]
            except LoradeckError:
                self.notify(f"{Path(run).name} has no adapter yet: chatting with the base model", title="chat")
        plan = rate_again_plan(run) if adapters else None
        if plan is not None:
            self.app.open_chat([run, str(plan.starting)], rate_again=plan)
            return
        self.app.open_chat(adapters)

    def action_eval_report(self) -> None:
        """The selected run's before/after report (and a new one on request)."""
        run = self._cursor_run()
        if not run:
            self.notify("no run selected: train one first (n)", title="eval")
            return
        from tui.screens.evaluation import EvalScreen

        self.app.push_screen(EvalScreen(run))

    def action_export_run(self) -> None:
        """Export the selected run: merged model, GGUF files, Modelfile."""
        from engine.errors import LoradeckError
        from engine.models.adapters import resolve_adapter

        run = self._cursor_run()
        if not run:
            self.notify("no run selected: train one first (n)", title="export")
            return
        try:
            resolve_adapter(run)
        except LoradeckError:
            self.notify(f"{Path(run).name} has no adapter yet: export once it has saved one", title="export")
            return
        from tui.screens.export import ExportScreen

        self.app.push_screen(ExportScreen(run))

    def action_new_run(self) -> None:
        from engine.run.mirror import read_remote
        from tui.screens.new_run import NewRunScreen

        remote = read_remote(self.runs_dir)
        if remote is not None:
            self.notify(f"these runs are on {remote.get('host')}: start new ones there (ssh {remote.get('host')} "
                        "loradeck train CONFIG)", title="new run", severity="warning", timeout=8)
            return

        self.app.push_screen(NewRunScreen(self.runs_dir, self.config_path))


STATUS_THEME_VARIABLE = {"running": "primary", "finished": "success", "failed": "error", "lost": "error",
                         "deadline": "warning", "stopped": "warning"}
