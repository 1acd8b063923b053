"""The Textual app: wires screens, bindings and themes. Screens live in tui/screens/."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.screen import Screen

from themes import DEFAULT_THEME, STYLESHEET, THEMES
from tui.screens.home import HomeScreen
from tui.settings import save_theme, saved_theme


class LoradeckApp(App):
    """loradeck's terminal cockpit."""

    TITLE = "loradeck"
    SUB_TITLE = "LoRA / QLoRA fine-tuning cockpit"
    CSS_PATH = str(STYLESHEET)
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, runs_dir: Path = Path("runs"), config_path: str | None = None,
                 attach_to: str | Path | None = None, chat: tuple[str | None, list[str], bool] | None = None):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.config_path = config_path
        self.attach_to = attach_to
        self.chat_request = chat
        for theme in THEMES:
            self.register_theme(theme)
        self.theme = saved_theme(self.available_themes) or DEFAULT_THEME

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette (ctrl+p) holds every action of the screen it was opened on, with its key, then Textual's own
        (themes, screenshot, quit)."""
        textual_commands = list(super().get_system_commands(screen))
        seen = {command.title for command in textual_commands}
        for key, active in screen.active_bindings.items():
            binding = active.binding
            title = binding.description
            own = isinstance(active.node, (Screen, App)) and binding.show and binding.action != "command_palette"
            if not own or not title or title in seen or not active.enabled:
                continue  # widgets' scrolling keys and the palette itself stay out
            seen.add(title)
            yield SystemCommand(title, f"key: {self.get_key_display(binding)}",
                                partial(self.run_action, binding.action, active.node))
        yield from textual_commands

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, lambda theme: save_theme(theme.name))
        self.push_screen(HomeScreen(self.runs_dir, self.config_path))
        if self.attach_to is not None:
            self.open_run(self.attach_to)
        if self.chat_request is not None:
            base, adapters, load_in_4bit = self.chat_request
            self.open_chat(adapters, base=base, load_in_4bit=load_in_4bit)

    def open_run(self, run_dir: str | Path) -> None:
        """Show the monitor for a run directory (Escape returns to Home)."""
        from tui.screens.monitor import MonitorScreen

        self.push_screen(MonitorScreen(run_dir))

    def open_chat(self, adapters: list[str], *, base: str | None = None, load_in_4bit: bool = False,
                  rate_again=None) -> None:
        """Show the chat screen for `adapters` (run dirs, adapter folders, bundles) against their base model
        (`rate_again`: a DPO run, blind against the adapter it started from)."""
        from engine.chat.generation import ratings_folder
        from engine.models.adapters import base_for, run_dir_of
        from engine.config import load_config
        from engine.errors import LoradeckError
        from tui.screens.chat import ChatScreen

        try:
            config_base = load_config(self.config_path).model.name
        except LoradeckError:
            config_base = None
        try:
            base, run_4bit = base_for(adapters, base, config_base)
            ratings = ratings_folder(adapters)
            runs = [run for run in (run_dir_of(a) for a in adapters) if run is not None]
        except LoradeckError as exc:
            self.notify(str(exc), title="chat", severity="error", timeout=10)
            return
        self.push_screen(ChatScreen(base, adapters, load_in_4bit=load_in_4bit or run_4bit,
                                    ratings_dir=ratings or self.runs_dir / "chat",
                                    prompts_source=runs[0] if runs else None, rate_again=rate_again))
