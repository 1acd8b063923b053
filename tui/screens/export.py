"""Export a finished run: choose the files, watch each stage, read the checks.

The export runs as `loradeck export … --progress-json` in a child process (the
TUI never loads torch); each stage's progress streams into a bar, finished
stages are listed with their times, and at the end the screen shows the files
written and every check from the run's export.json.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, ProgressBar, Select, Static

from engine.export.gguf_file import known_types
from engine.export.report import check_line
from tui.child import ProgressChild
from tui.format import format_bytes

DEFAULT_TYPES = ("f16", "q8_0")
DTYPE_CHOICES = [("the base model's", "auto"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "fp32")]


def default_ollama_name(run_dir: Path) -> str:
    """The run's name as Ollama accepts it (lower-case letters, digits, '.', '_', '-')."""
    return re.sub(r"[^a-z0-9._-]+", "-", run_dir.name.lower()).strip("-._") or "my-model"


class ExportScreen(Screen):
    """The export dialog for one run, its progress and its result."""

    BINDINGS = [
        Binding("ctrl+e", "start", "Export"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.child: ProgressChild | None = None
        self.stage: str | None = None
        self.stage_lines: list[str] = []
        self.result: dict[str, Any] | None = None
        self.title = f"loradeck · export {self.run_dir.name}"

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="export-form"):
            yield Static(f"Export [b]{escape(self.run_dir.name)}[/b]: the adapter merged into its base, GGUF files "
                         "for llama.cpp / Ollama, each loaded back and checked.", id="export-intro")
            with Horizontal(classes="export-row"):
                yield Label("folder", classes="export-label")
                yield Input(str(self.run_dir / "export"), id="export-out")
            with Horizontal(classes="export-row"):
                yield Label("GGUF", classes="export-label")
                with Container(id="export-types"):
                    for type_name in known_types():
                        yield Checkbox(type_name, type_name in DEFAULT_TYPES, id=f"gguf-{type_name}")
            with Horizontal(classes="export-row"):
                yield Label("Ollama name", classes="export-label")
                yield Input(default_ollama_name(self.run_dir), placeholder="empty: no Modelfile", id="export-ollama")
            with Horizontal(classes="export-row"):
                yield Label("merged dtype", classes="export-label")
                yield Select(DTYPE_CHOICES, value="auto", allow_blank=False, id="export-dtype")
            yield Button("Export (ctrl+e)", variant="primary", id="export-start")
            with Vertical(id="export-status", classes="panel"):
                yield Static("", id="export-stage")
                yield ProgressBar(total=1.0, show_eta=False, id="export-progress")
                yield Static("", id="export-log")
                yield Static("", id="export-result")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#export-progress", ProgressBar).display = False
        self.query_one("#export-status").display = False
        self._show_existing()

    def on_unmount(self) -> None:
        if self.child is not None:
            self.child.stop()

    def _show_existing(self) -> None:
        """An earlier export of this run, when the folder holds one."""
        summary = self._read_summary()
        if summary is not None:
            self.query_one("#export-status").display = True
            self.query_one("#export-stage", Static).update("the last export in this folder:")
            self._show_result(summary)

    def _read_summary(self) -> dict[str, Any] | None:
        path = Path(self.query_one("#export-out", Input).value).expanduser() / "export.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) and isinstance(summary.get("checks"), list) else None

    # ------------------------------------------------------------ starting

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "export-start":
            self.action_start()

    def export_command(self) -> list[str] | None:
        """The real CLI command for the choices on screen, or None (with a notice) when they are incomplete."""
        out = self.query_one("#export-out", Input).value.strip()
        if not out:
            self.notify("choose a folder to export into", title="export", severity="warning")
            return None
        command = [sys.executable, "-m", "tui.cli", "export", str(self.run_dir), "--out", out, "--json",
                   "--progress-json"]
        types = [box.id.removeprefix("gguf-") for box in self.query(Checkbox) if box.value]
        for type_name in types:
            command += ["--gguf", type_name]
        ollama = self.query_one("#export-ollama", Input).value.strip()
        if ollama:
            if not types:
                self.notify("a Modelfile needs a GGUF file: tick one, or clear the Ollama name", title="export",
                            severity="warning")
                return None
            command += ["--ollama", ollama]
        dtype = self.query_one("#export-dtype", Select).value
        if dtype != "auto":
            command += ["--dtype", str(dtype)]
        return command

    def action_start(self) -> None:
        if self.child is not None and self.child.running:
            self.notify("the export is running already", title="export")
            return
        command = self.export_command()
        if command is None:
            return
        self.stage, self.stage_lines, self.result = None, [], None
        self.query_one("#export-result", Static).update("")
        self.query_one("#export-log", Static).update("")
        self.query_one("#export-status").display = True
        bar = self.query_one("#export-progress", ProgressBar)
        bar.display = True
        bar.update(progress=0.0)
        self.query_one("#export-stage", Static).update("starting: loading the base model…")
        self.query_one("#export-start", Button).disabled = True
        child = self.child = ProgressChild(command)
        self.run_worker(lambda: child.run(self.app, self._progress, self._finished), thread=True, exclusive=True,
                        group="export")

    # ------------------------------------------------------------ progress and result

    def _progress(self, update: dict[str, Any]) -> None:
        stage, message = str(update.get("stage", "")), str(update.get("message", ""))
        fraction = float(update["fraction"])
        if stage != self.stage:
            if self.stage is not None:
                self.stage_lines.append(f"✓ {self.stage}")
            self.stage = stage
            self.query_one("#export-log", Static).update("\n".join(self.stage_lines))
        self.query_one("#export-progress", ProgressBar).update(progress=fraction)
        self.query_one("#export-stage", Static).update(f"[b]{escape(stage)}[/b]: {escape(message)}")

    def _finished(self, code: int, output: str, error: str) -> None:
        self.query_one("#export-progress", ProgressBar).display = False
        self.query_one("#export-start", Button).disabled = False
        try:
            summary = json.loads(output)
        except ValueError:
            summary = None
        if summary is None:
            message = error.removeprefix("loradeck: error: ") or f"loradeck export exited with {code}"
            self.query_one("#export-stage", Static).update(f"[b]export failed[/b]: {escape(message)}")
            self.notify(message, title="export failed", severity="error", timeout=10)
            return
        self.result = summary
        self.query_one("#export-log", Static).update("")
        verdict = "every check passed" if summary.get("passed") else "a check FAILED — see EXPORT.md"
        self.query_one("#export-stage", Static).update(f"[b]export finished[/b]: {verdict}")
        self._show_result(summary)

    def _show_result(self, summary: dict[str, Any]) -> None:
        out = Path(self.query_one("#export-out", Input).value).expanduser()
        lines = [f"[b]files[/b]: {escape(str(out))}"]
        for entry in summary.get("files") or []:
            if isinstance(entry, dict):
                size = entry.get("bytes")
                lines.append(f"  {escape(str(entry.get('path', '')))}  "
                             f"{format_bytes(size) if isinstance(size, int) else ''}")
        lines.append("[b]checks[/b]")
        for check in summary.get("checks") or []:
            try:
                lines.append("  " + escape(check_line(check)))
            except (KeyError, TypeError, ValueError):
                continue  # a hand-edited export.json: show what can be shown
        ollama = summary.get("ollama") or {}
        if ollama.get("name"):
            lines.append(f"[b]next[/b]: ollama create {escape(str(ollama['name']))} -f {escape(str(out / 'Modelfile'))}")
        lines.append(f"report: {escape(str(out / 'EXPORT.md'))}")
        self.query_one("#export-result", Static).update("\n".join(lines))
