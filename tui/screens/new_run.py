"""New run: a form over the typed config, validated as you type, saved as TOML, started with one key."""

from __future__ import annotations

import copy
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static, Switch

from engine.config import RunConfig, load_config, section_fields, set_value
from engine.errors import LoradeckError
from tui.format import short_path
from tui.settings import remember_form_config, remembered_form_config

# (dotted key, label) in form order; choices come from the config model itself.
FORM_FIELDS = (
    ("model.name", "model"),
    ("train.method", "method"),
    ("model.adapter", "start from adapter"),
    ("data.path", "dataset"),
    ("model.load_in_4bit", "4-bit (QLoRA)"),
    ("train.gradient_checkpointing", "checkpointing"),
    ("lora.r", "LoRA rank r"),
    ("lora.alpha", "LoRA alpha"),
    ("train.epochs", "epochs"),
    ("train.max_steps", "max steps (-1: epochs)"),
    ("train.learning_rate", "learning rate"),
    ("train.lr_scheduler", "LR schedule"),
    ("train.batch_size", "batch size"),
    ("train.grad_accum", "grad accumulation"),
    ("data.max_length", "max length (tokens)"),
    ("distributed.processes", "processes (GPUs)"),
    ("distributed.strategy", "multi-GPU strategy"),
    ("session.budget", "session budget"),
    ("session.preset", "session preset"),
)


def field_id(key: str) -> str:
    return "field-" + key.replace(".", "-")


def field_meta(key: str) -> dict:
    section, name = key.split(".")
    return dict(section_fields(section)[name].metadata)


def current_value(config: RunConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def validate_field(config: RunConfig, key: str, text) -> str | None:
    """What is wrong with `text` for `key` (the CLI's message for `--set key=text`, without the key it is shown
    under), or None when valid (assigns it into `config`)."""
    origin = f"{key}={text}"
    try:
        set_value(config, key, text, from_text=not isinstance(text, bool), origin=origin)
    except LoradeckError as exc:
        return str(exc).removeprefix(f"{origin}: ").removeprefix(f"{key}: ")
    if key == "data.path" and text and not Path(str(text)).expanduser().exists():
        return "no such file — give a .jsonl/.json/.csv/.parquet path"
    if key == "model.adapter" and text:
        from engine.models.adapters import resolve_adapter

        try:
            resolve_adapter(str(text))
        except LoradeckError as exc:
            return str(exc).split(": ", 1)[-1]
    return None


def choice_label(choice) -> str:
    """A config choice as a drop-down shows it: on / off for a switch that may also be "auto", none for empty."""
    if isinstance(choice, bool):
        return "on" if choice else "off"
    return str(choice) or "none"


def shown_text(key: str, value) -> str:
    """A field's value as the form's text box shows it."""
    return short_path(value) if key in ("data.path", "model.adapter") and value else str(value)


FIELD_PLACEHOLDERS = {  # what an empty field means, and what goes in it
    "session.budget": "e.g. 9h30m or 12h (empty: no session clock)",
    "session.deadline": "e.g. 2026-11-28T18:00 (empty: none)",
    "data.eval_path": "empty: hold out data.eval_split of the rows",
    "model.adapter": "empty: a fresh LoRA (a run dir, checkpoint or bundle continues it)",
}


class NewRunScreen(Screen):
    """Form → validated RunConfig → TOML → detached run → monitor."""

    BINDINGS = [
        Binding("f2", "preflight", "Preflight"),
        Binding("ctrl+s", "save_config", "Save TOML"),
        Binding("ctrl+r", "reset_form", "Reset form"),
        Binding("f5", "start_run", "Start run"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, runs_dir: Path, config_path: str | None):
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.config_path = config_path
        try:
            self.given = load_config(config_path)
        except LoradeckError:
            self.given = load_config(None)
        self.remembered = remembered_form_config()
        self.base = self.remembered or self.given
        self.errors: dict[str, str] = {}
        # Set before mount: a title change after the Header mounts races screen switches.
        self.title = "loradeck · new run"

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="new-run-body"):
            with VerticalScroll(id="new-run-form", classes="panel") as form:
                form.border_title = "New run · " + (f"your last form (ctrl+r: {self._given_name()})"
                                                    if self.remembered else f"from {self._given_name()}")
                for key, label in FORM_FIELDS:
                    value = current_value(self.base, key)
                    meta = field_meta(key)
                    with Horizontal(classes="form-row"):
                        yield Label(label, classes="form-label")
                        if meta.get("choices"):
                            yield Select([(choice_label(c), c) for c in meta["choices"]], value=value,
                                         allow_blank=False, id=field_id(key))
                        elif isinstance(value, bool):
                            yield Switch(value=value, id=field_id(key))
                        else:
                            yield Input(shown_text(key, value), id=field_id(key), tooltip=meta.get("help"),
                                        placeholder=FIELD_PLACEHOLDERS.get(key, ""))
                    yield Static("", id=field_id(key) + "-error", classes="field-error")
                with Horizontal(classes="form-row"):
                    yield Label("run name", classes="form-label")
                    yield Input(placeholder="names the run directory (default: the save-as file's name)",
                                id="run-name", tooltip="the run directory is RUNS/<time>-<run name>")
                with Horizontal(classes="form-row"):
                    yield Label("save as", classes="form-label")
                    yield Input(str(self.runs_dir.parent / "configs" / "my-run.toml")
                                if self.runs_dir.name == "runs" else "my-run.toml", id="save-path")
            with Vertical(id="new-run-side"):
                verdict = Static("F2 runs the memory preflight.", id="preflight-panel", classes="panel")
                verdict.border_title = "preflight"
                yield verdict
                summary = Static("", id="form-status", classes="panel")
                summary.border_title = "status"
                yield summary
        yield Footer()

    def on_mount(self) -> None:
        self._show_status()

    def _given_name(self) -> str:
        return short_path(self.config_path) if self.config_path else "defaults"

    def action_reset_form(self) -> None:
        """Every field back to the config the TUI was started with (or the defaults)."""
        for key, _ in FORM_FIELDS:
            value = current_value(self.given, key)
            widget = self.query_one("#" + field_id(key))
            widget.value = shown_text(key, value) if isinstance(widget, Input) else value
        self.base = self.given
        self.query_one("#new-run-form").border_title = f"New run · from {self._given_name()}"
        self.notify(f"the form is {self._given_name()} again", title="reset")

    def build_config(self) -> RunConfig:
        """The config the form describes (each field validated); errors land in self.errors."""
        config = copy.deepcopy(self.base)
        self.errors = {}
        for key, _ in FORM_FIELDS:
            widget = self.query_one("#" + field_id(key))
            value = widget.value
            if isinstance(widget, Input):
                value = value.strip()
            message = validate_field(config, key, value)
            if message:
                self.errors[key] = message
            self.query_one("#" + field_id(key) + "-error", Static).update(message or "")
        if not self.errors:
            from engine.config import check_config

            try:
                check_config(config, origin="form")
            except LoradeckError as exc:
                self.errors["form"] = str(exc)
        return config

    def _show_status(self) -> RunConfig:
        config = self.build_config()
        status = self.query_one("#form-status", Static)
        if self.errors:
            labels = dict(FORM_FIELDS)
            status.update("[$error]fix:[/]\n" + "\n".join(f"{labels.get(key, key)}: {message}" if key in labels
                                                           else message for key, message in self.errors.items()))
        else:
            status.update("[$success]valid[/] — F5 starts it, Ctrl+S saves the TOML")
        return config

    @on(Input.Changed)
    @on(Switch.Changed)
    @on(Select.Changed)
    def field_changed(self) -> None:
        self._show_status()

    def action_save_config(self) -> Path | None:
        config = self._show_status()
        if self.errors:
            self.notify("fix the highlighted fields first", severity="error", title="save")
            return None
        target = Path(self.query_one("#save-path", Input).value.strip() or "my-run.toml").expanduser()
        from engine.config import save_config

        target.parent.mkdir(parents=True, exist_ok=True)
        save_config(config, target, portable_paths=True)
        remember_form_config(config)
        self.notify(f"saved {target}", title="save")
        return target

    def action_preflight(self) -> None:
        config = self._show_status()
        if self.errors:
            self.notify("fix the highlighted fields first", severity="error", title="preflight")
            return
        self.query_one("#preflight-panel", Static).update("estimating… (loads the tokenizer and reads the data)")
        self._run_preflight(config)

    @work(thread=True, exclusive=True, group="preflight")
    def _run_preflight(self, config: RunConfig) -> None:
        from engine.train.preflight import run_preflight

        def shown(report, label: str) -> str:
            colour = {"fits": "$success", "tight": "$warning"}.get(report.verdict, "$error")
            return "\n".join([f"[{colour}][b]{report.verdict.upper()}[/b][/] ({label})", *report.reasons,
                              *(f"try: {s}" for s in report.suggestions)])

        panel = self.query_one("#preflight-panel", Static)
        try:  # the estimate at once, then one real step measured — the figure to trust, and the CLI's
            estimate = run_preflight(config, measure=False)
            self.app.call_from_thread(panel.update, shown(estimate, "estimate; measuring one real step…"))
            measured = run_preflight(config, measure=True)
            text = shown(measured, "measured")
        except LoradeckError as exc:
            text = f"[$error]{exc}[/]"
        self.app.call_from_thread(panel.update, text)

    def action_start_run(self) -> None:
        config = self._show_status()
        if self.errors:
            self.notify("fix the highlighted fields first", severity="error", title="start")
            return
        self.notify("starting the trainer…", title="start")
        remember_form_config(config)
        self._start(config)

    @work(thread=True, exclusive=True, group="start")
    def _start(self, config: RunConfig) -> None:
        from engine.train.launcher import launch_detached, new_run_dir, prepare_run_dir

        try:
            label = self.query_one("#run-name", Input).value.strip() \
                or Path(self.query_one("#save-path", Input).value.strip() or "run").stem
            paths = prepare_run_dir(new_run_dir(self.runs_dir, label), config)
            launch_detached(paths.root)
        except LoradeckError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", title="start")
            return
        self.app.call_from_thread(self._open, paths.root)

    def _open(self, run_dir: Path) -> None:
        from tui.screens.monitor import MonitorScreen

        self.app.switch_screen(MonitorScreen(run_dir))

