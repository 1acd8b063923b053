"""The Textual app: wires screens, bindings and themes. Screens live in tui/screens/."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from themes import DEFAULT_THEME, STYLESHEET, THEMES
from tui.screens.home import HomeScreen


class LoradeckApp(App):
    """loradeck's terminal cockpit."""

    TITLE = "loradeck"
    SUB_TITLE = "LoRA / QLoRA fine-tuning cockpit"
    CSS_PATH = str(STYLESHEET)
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, runs_dir: Path = Path("runs"), config_path: str | None = None,
                 attach_to: str | Path | None = None):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.config_path = config_path
        self.attach_to = attach_to
        for theme in THEMES:
            self.register_theme(theme)
        self.theme = DEFAULT_THEME

    def on_mount(self) -> None:
        self.push_screen(HomeScreen(self.runs_dir, self.config_path))
        if self.attach_to is not None:
            self.open_run(self.attach_to)

    def open_run(self, run_dir: str | Path) -> None:
        """Show the monitor for a run directory (Escape returns to Home)."""
        from tui.screens.monitor import MonitorScreen

        self.push_screen(MonitorScreen(run_dir))
