"""Monitor: one run's loss curves, throughput, GPU/host memory, session countdown, alerts and log.

The screen is a client of the run directory: it tails `events.jsonl` through
`RunHistory` (bytes appended since the last tick, coalesced twice a second) and
sends commands through the control folder. Leaving it never touches the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, ProgressBar, RichLog, Sparkline, Static
from textual_plotext import PlotextPlot

from engine.run.history import RunHistory
from engine.run.remote import connection_line
from tui.format import (format_bytes, format_duration, format_number, format_share, format_used_of, integer_ticks,
                        one_line, theme_rgb)

ZOOM_STEPS = (0, 50, 200)  # 0 = every step
MEMORY_POINTS = 120  # telemetry arrives every 5 s: the graphs show the last 10 minutes
GAP = "\u00a0 "  # a no-break space first, so SVG screenshots keep the gap after a styled word
AMBER_S, RED_S = 30 * 60, 5 * 60
STATUS_STYLE = {"running": "$primary", "finished": "$success", "failed": "$error", "lost": "$error",
                "deadline": "$warning", "stopped": "$warning"}


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; Enter/y confirms, Escape/n cancels."""

    BINDINGS = [("y", "answer(True)", "Yes"), ("n", "answer(False)", "No"), ("escape", "answer(False)", "Cancel")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", id="yes", variant="warning")
                yield Button("No (n)", id="no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ExtendScreen(ModalScreen[str | None]):
    """Ask how much session time to add."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Extend the session by (e.g. 30m, 1h30m):")
            yield Input(placeholder="30m", id="extend-input")
            yield Label("", id="extend-error", classes="field-error")
            yield Label("enter extends · esc cancels", classes="dialog-hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        from engine.config import parse_duration

        try:
            if parse_duration(event.value or "30m") <= 0:
                raise ValueError("give a positive duration")
        except ValueError as exc:
            self.query_one("#extend-error", Label).update(str(exc))
            return
        self.dismiss(event.value or "30m")

    def action_cancel(self) -> None:
        self.dismiss(None)


def progress_line(history: RunHistory) -> str:
    """'run-id  [status]  step 40/96  epoch 1.25  ETA 2m10s' with the status in its theme colour."""
    summary = history.summary
    steps = f"{summary.step}/{summary.max_steps}" if summary.max_steps else str(summary.step)
    eta = history.eta_seconds()
    parts = [f"[b]{summary.run_id}[/b]", f"[{STATUS_STYLE.get(summary.status, '$text-muted')}]{summary.status}[/]",
             f"step {steps}", f"epoch {format_number(summary.epoch, 3)}"]
    if summary.world_size > 1:
        parts.append(f"{summary.world_size} processes" + (" (FSDP)" if summary.sharded else ""))
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    if summary.message and summary.status != "running":
        parts.append(f"[$text-muted]{summary.message}[/]")
    connection = connection_line(history.paths.root, summary.updated_at)
    if connection:  # a run on another machine whose connection dropped: the run itself is not affected
        parts.append(f"[$warning]{connection}[/]")
    return GAP.join(parts)


def metrics_text(history: RunHistory) -> str:
    """Learning rate, grad norm, throughput, eval loss: the numbers beside the curve."""
    lr = history.lr.last()
    parts = [f"loss [b]{format_number(history.loss.last())}[/b]", f"eval [b]{format_number(history.eval_loss.last())}[/b]",
             f"lr {f'{lr:.2e}' if lr is not None else '—'}", f"grad {format_number(history.grad_norm.last(), 3)}",
             f"{format_number(history.tokens_per_s.last(), 4)} tok/s",
             f"pad {format_share(history.summary.padding)}"]
    if len(history.reward_margin):
        parts[2:2] = [f"margin [b]{format_number(history.reward_margin.last(), 3)}[/b]",
                      f"acc {format_share(history.preference_accuracy.last())}"]
    return GAP.join(parts)


def session_text(history: RunHistory, now: float | None = None) -> tuple[str, str]:
    """The countdown panel's text and its state class: none, ok, amber, red."""
    left = history.time_left(now)
    if left is None:
        return "No session clock.\nStart with --session 9h30m\nor --preset kaggle.", "none"
    margin = history.deadline.get("margin_s")
    save_in = history.final_save_eta(now)
    lines = [f"[b]{format_duration(max(left, 0))}[/b] left" if history.summary.status == "running"
             else f"ended with {format_duration(max(left, 0))} left",
             f"deadline {time.strftime('%H:%M:%S', time.localtime(history.summary.deadline_at))}",
             f"margin {format_duration(margin) if margin is not None else 'measuring…'}"]
    if save_in is not None:
        lines.append(f"final save in ~{format_duration(save_in)}")
    state = "red" if left <= RED_S else "amber" if left <= AMBER_S else "ok"
    return "\n".join(lines), state


def device_text(history: RunHistory) -> str:
    """GPU devices and our process's own allocator figures; host RAM/CPU when there is no GPU."""
    event = history.last_telemetry()
    if event is None:
        return "waiting for telemetry…"
    lines = []
    for device in event.get("devices") or []:
        used, total = device.get("memory_used"), device.get("memory_total")
        lines.append(f"GPU{device['index']} {(device.get('name') or '')[:18]}")
        lines.append(f" util {format_number(device.get('utilization_pct'), 3)}%  MFU {format_share(history.summary.mfu)}")
        lines.append(f" VRAM {format_used_of(used, total)}")
        lines.append(f" {format_number(device.get('temperature_c'), 3)}°C  {format_number(device.get('power_w'), 3)}"
                     f"/{format_number(device.get('power_limit_w'), 3)} W")
    ranks = [r for r in event.get("ranks") or [] if isinstance(r, dict)]
    for figures in ranks:  # several training processes: each one's own memory
        where = f" GPU{figures['device']}" if isinstance(figures.get("device"), int) else ""
        own = (f"alloc {format_bytes(figures.get('allocated'))} peak {format_bytes(figures.get('peak_allocated'))}"
               if figures.get("allocated") is not None else f"RSS {format_bytes(figures.get('rss'))}")
        held = figures.get("weights")
        lines.append(f"rank {figures.get('rank', '?')}{where}: {own}"
                     + (f" wts {format_bytes(held)}" if isinstance(held, int) and history.summary.sharded else ""))
    process = event.get("process") or {}
    if process and not ranks:
        lines.append(f"this run: alloc {format_bytes(process.get('allocated'))} "
                     f"resv {format_bytes(process.get('reserved'))} peak {format_bytes(process.get('peak_allocated'))}")
    host = event.get("host") or {}
    if not event.get("devices"):
        lines.append("[$text-muted]no GPU: host figures[/]")
    lines.append(f"RAM {format_used_of(host.get('ram_used'), host.get('ram_total'))}  "
                 f"CPU {format_percent(host.get('cpu_pct'))}")
    if event.get("devices"):  # without a GPU the second graph's label says it
        lines.append(f"trainer RSS {format_bytes(host.get('process_rss'))}")
    return "\n".join(lines)


def format_percent(value) -> str:
    """'99%' (whole percent), or '—' when missing."""
    return f"{value:.0f}%" if isinstance(value, (int, float)) and value == value else "—"


def memory_graphs(history: RunHistory) -> list[tuple[str, list[float]]]:
    """The two memory histories (the last MEMORY_POINTS telemetry events), each with the label drawn above it: the
    device's VRAM in use and this run's own allocated memory on a GPU; host RAM in use and the trainer's RSS without
    one. A history with no figures yet has an empty series."""
    def graph(name: str, pick) -> tuple[str, list[float]]:
        values = history.telemetry_series(pick)[-MEMORY_POINTS:]
        return (f"{name} {format_bytes(values[-1])} max {format_bytes(max(values))}" if values else name), values

    if history.telemetry_series(lambda e: e["devices"][0]["memory_used"]):
        return [graph("GPU0 VRAM", lambda e: e["devices"][0]["memory_used"]),
                graph("this run", lambda e: e["process"]["allocated"])]
    return [graph("host RAM", lambda e: e["host"]["ram_used"]),
            graph("trainer RSS", lambda e: e["host"]["process_rss"])]


def log_line(event: dict, colours: dict[str, str]) -> Text:
    """One event-log line (time, step, what happened) as Rich text in the theme's colours.

    RichLog renders Rich markup, which cannot read Textual's $variables, so the
    colours are looked up from the active theme here.
    """
    stamp = time.strftime("%H:%M:%S", time.localtime(event.get("ts", time.time())))
    step = f"step {event['step']:>5}" if isinstance(event.get("step"), int) else " " * 10
    kind = event.get("type")
    label, colour, text = kind, "foreground", ""
    if kind == "checkpoint":
        label, colour = "saved", "success"
        text = f"{event.get('reason')} checkpoint ({event.get('seconds')} s)"
    elif kind == "warning":
        colour, text = "warning", str(event.get("message"))
    elif kind == "error":
        colour, text = "error", str(event.get("message"))
    elif kind == "finished":
        colour, text = "primary", f"{event.get('reason')}: {event.get('message', '')}"
    elif kind == "resumed":
        colour, text = "primary", f"from step {event.get('step')} ({event.get('bundle')})"
    elif kind == "model_loaded":
        label = "loaded"
        text = (f"{event.get('backend')} on {event.get('device')}, {event.get('data_format')} data, "
                f"{event.get('train_rows')} rows, {event.get('max_steps')} steps")
        if event.get("packing") is True:
            text += ", packed"
        if event.get("gradient_checkpointing") is True:
            auto = str(event.get("checkpointing_reason", "")).startswith("auto")
            text += ", checkpointing" + (" (auto)" if auto else "")
    elif kind == "control":
        label, text = "command", str(event.get("command"))
    elif kind == "eval_report":
        label, colour, text = "eval", "success", f"{event.get('headline')} (v: the report)"
    else:
        text = f"pid {event.get('pid')} on {event.get('host')}"
    # "text-muted" is a Textual expression ("auto 60%"), not a colour Rich can parse: dim instead.
    return Text.assemble((f"{stamp} {step}  ", "dim"),
                         (f"{label} ", f"bold {colours.get(colour, '')}"), text)


def probe_text(history: RunHistory, width: int = 70) -> str:
    """The latest probe answers, each under its prompt, with the first answer (before training) when it differs."""
    from rich.markup import escape

    first = {s["prompt"]: s["answer"] for s in (history.first_samples or {}).get("samples", [])}
    lines = []
    for sample in (history.latest_samples or {}).get("samples", []):
        lines.append(f"[b]› {escape(one_line(sample['prompt'], width))}[/b]")
        lines.append(f"  {escape(one_line(sample['answer'], width))}")
        before = first.get(sample["prompt"])
        if before is not None and before != sample["answer"] and history.first_samples is not history.latest_samples:
            lines.append(f"  [$text-muted]step {history.first_samples.get('step')}: {escape(one_line(before, width))}[/]")
    return "\n".join(lines)


class MonitorScreen(Screen):
    """Live (or replayed) view of one run directory."""

    BINDINGS = [
        Binding("s", "save_now", "Save now"),
        Binding("x", "stop_run", "Stop & save"),
        Binding("e", "extend", "Extend session"),
        Binding("z", "zoom", "Zoom"),
        Binding("p", "toggle_probes", "Probes"),
        Binding("v", "eval_report", "Eval"),
        Binding("o", "export_run", "Export"),
        Binding("escape", "back", "Back"),
    ]
    POLL_SECONDS = 0.5
    LOADING_SLICE_SECONDS = 0.25  # a long log is read in slices this long, so keys still answer while it loads
    PLOT_EVERY_SECONDS = 1.0  # plotext is pure Python; under a flood of events the curve redraws once a second

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.history = RunHistory(run_dir)
        # Set before mount: a title change after the Header mounts races screen switches.
        self.title = f"loradeck · {self.history.summary.run_id}"
        self.zoom_index = 0
        self.small = False  # a short terminal: probes fold away unless asked for
        self.probes_wanted: bool | None = None  # p's choice; None: the size decides
        self.plotted_points = -1
        self.logged = 0
        self.plotted_at = 0.0
        self.plot_stale = True
        self.panels_drawn = False
        self.shown: dict[str, str] = {}
        self.bell_rung: list[float] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="progress-line")
        yield ProgressBar(total=None, show_eta=False, id="step-progress")
        with Horizontal(id="monitor-body"):
            with Vertical(id="monitor-main"):
                plot = PlotextPlot(id="loss-plot", classes="panel")
                plot.border_title = "loss"
                yield plot
                probes = Static("", id="probe-panel", classes="panel")
                probes.border_title = "probes"
                yield probes
                yield Static("", id="metrics-line")
            with Vertical(id="monitor-side"):
                session = Static("", id="session-panel", classes="panel")
                session.border_title = "session"
                yield session
                with Vertical(id="device-panel", classes="panel") as devices:
                    devices.border_title = "GPU / memory"
                    yield Static("", id="device-text")
                    for number in (1, 2):
                        yield Static("", id=f"memory-label-{number}", classes="memory-label")
                        yield Sparkline([], id=f"memory-history-{number}", classes="memory-graph")
                alerts = Static("", id="alerts-panel", classes="panel")
                alerts.border_title = "alerts"
                yield alerts
        log = RichLog(id="event-log", classes="panel", wrap=True, max_lines=500)
        log.border_title = "events"
        yield log
        yield Footer()

    def on_mount(self) -> None:
        self.history.poll(budget_s=self.LOADING_SLICE_SECONDS)
        self.history.take_warnings()  # replayed history: only warnings that arrive while watching ring the bell
        self.refresh_from_history()
        self.set_interval(self.POLL_SECONDS, self.refresh_from_history)

    def refresh_from_history(self) -> None:
        """Fold in new events (coalesced per tick) and redraw what changed."""
        loading = self.history.loading
        new_events = self.history.poll(budget_s=self.LOADING_SLICE_SECONDS if loading else 0.1)
        if loading:  # replayed history: only warnings that arrive while watching ring the bell
            self.history.take_warnings()
        summary = self.history.summary
        self._show("#progress-line", progress_line(self.history))
        bar = self.query_one("#step-progress", ProgressBar)
        if summary.max_steps and (bar.total, bar.progress) != (summary.max_steps, summary.step):
            bar.update(total=summary.max_steps, progress=summary.step)
        if new_events:
            self.plot_stale = True
        if self.plot_stale and time.monotonic() - self.plotted_at >= self.PLOT_EVERY_SECONDS:
            self._redraw_plot()
        if new_events or not self.panels_drawn:
            self.panels_drawn = True
            self._show("#metrics-line", metrics_text(self.history))
            self._show("#device-text", device_text(self.history))
            for number, (label, values) in enumerate(memory_graphs(self.history), start=1):
                self._show(f"#memory-label-{number}", label)
                sparkline = self.query_one(f"#memory-history-{number}", Sparkline)
                if list(sparkline.data or []) != values:
                    sparkline.data = values
                for widget in (sparkline, self.query_one(f"#memory-label-{number}")):
                    widget.set_class(not values, "-empty")
            self._update_alerts()
            self._update_probes()
            unwritten = min(self.history.log_count - self.logged, len(self.history.log))
            log = self.query_one("#event-log", RichLog)
            for event in list(self.history.log)[len(self.history.log) - unwritten:]:
                log.write(log_line(event, self.app.theme_variables))
            self.logged = self.history.log_count
        self._update_session()
        for warning in self.history.take_warnings():
            if warning.get("kind") == "deadline":
                self.app.bell()
                self.bell_rung.append(warning.get("threshold_s"))
                self.notify(warning.get("message", ""), title="session", severity="warning")

    def _show(self, selector: str, text: str) -> None:
        """Update a Static only when its text changed: every repaint costs CPU the trainer may need."""
        if self.shown.get(selector) != text:
            self.shown[selector] = text
            self.query_one(selector, Static).update(text)

    def _update_session(self) -> None:
        text, state = session_text(self.history)
        self._show("#session-panel", text)
        panel = self.query_one("#session-panel", Static)
        for name in ("none", "ok", "amber", "red"):
            panel.set_class(name == state, f"session-{name}")

    SMALL_HEIGHT = 32  # below this many rows the loss curve keeps its room: probes fold away (p shows them)

    def on_resize(self, event) -> None:
        """On a short terminal (80×24) the curve, the loss/lr line and the events come first."""
        self.small = event.size.height < self.SMALL_HEIGHT
        self.set_class(self.small, "-small")
        self._update_probes()

    def action_toggle_probes(self) -> None:
        """Show or fold the probes panel (folded by default on a short terminal)."""
        if self.history.latest_samples is None:
            self.notify("this run has no probes (set [probe] prompts in the config)", title="probes")
            return
        self.probes_wanted = not self._probes_shown()
        self._update_probes()

    def _probes_shown(self) -> bool:
        return self.probes_wanted if self.probes_wanted is not None else not self.small

    def _update_probes(self) -> None:
        panel = self.query_one("#probe-panel", Static)
        panel.display = self.history.latest_samples is not None and self._probes_shown()
        if panel.display:
            panel.border_title = f"probes · step {self.history.latest_samples.get('step')}"
            self._show("#probe-panel", probe_text(self.history))

    def _update_alerts(self) -> None:
        alerts = self.history.alerts
        if not alerts:
            self._show("#alerts-panel", "[$success]no alerts[/]")
        else:
            self._show("#alerts-panel", "\n".join(f"[{'$error' if a.severity == 'error' else '$warning'}]{a.kind}[/] "
                                                  f"{a.message}" for a in alerts))

    def _redraw_plot(self) -> None:
        plot_widget = self.query_one("#loss-plot", PlotextPlot)
        self.plotted_at, self.plot_stale = time.monotonic(), False
        zoom = ZOOM_STEPS[self.zoom_index]
        loss, evals = self.history.loss, self.history.eval_loss
        self.plotted_points = len(loss) + len(evals)
        plt = plot_widget.plt
        plt.clear_data()
        plt.clear_figure()
        colours = self.app.theme_variables
        first_step = loss.steps[-zoom] if zoom and len(loss) > zoom else None
        # plotext is pure Python: a long run is drawn from bucket means, a few points per column.
        limit = max(400, plot_widget.size.width * 2)
        earlier = self.history.loss_tail_before_resume  # the losses that travelled in the bundle, dimmed
        before_x, before_y = earlier.downsampled(limit, first_step) if len(earlier) else ([], [])
        if before_x:
            plt.plot(before_x, before_y, label="before resume", marker="braille",
                     color=theme_rgb(colours.get("foreground-darken-3") or colours.get("secondary")))
        xs, ys = loss.downsampled(limit, first_step)
        if xs:
            plt.plot(xs, ys, label="train", marker="braille", color=theme_rgb(colours.get("primary")))
        eval_steps, eval_values = evals.downsampled(limit, first_step)
        if eval_steps:
            plt.scatter(eval_steps, eval_values, label="eval", marker="dot", color=theme_rgb(colours.get("accent")))
        margin, accuracy = self.history.reward_margin, self.history.preference_accuracy
        if len(margin):  # a DPO run: what it optimises, on the right-hand axis
            margin_x, margin_y = margin.downsampled(limit, first_step)
            plt.plot(margin_x, margin_y, label="reward margin →", marker="braille", yside="right",
                     color=theme_rgb(colours.get("success")))
            accuracy_x, accuracy_y = accuracy.downsampled(limit, first_step)
            plt.plot(accuracy_x, accuracy_y, label="preference accuracy →", marker="braille", yside="right",
                     color=theme_rgb(colours.get("warning")))
        shown = [*before_x, *xs, *eval_steps]
        if shown:
            ticks = integer_ticks(min(shown), max(shown))
            plt.xticks(ticks, [str(t) for t in ticks])
        plt.xlabel("step")
        what = "DPO loss, reward margin, accuracy" if len(margin) else "loss"
        plot_widget.border_title = f"{what} · " + (f"last {zoom} steps" if zoom else "all steps") + " (z: zoom)"
        plot_widget.refresh()

    def action_zoom(self) -> None:
        self.zoom_index = (self.zoom_index + 1) % len(ZOOM_STEPS)
        self._redraw_plot()

    def _send(self, command: str, **arguments) -> bool:
        from engine.run.control import send_command
        from engine.errors import LoradeckError

        try:
            send_command(self.history.paths.root, command, **arguments)
        except LoradeckError as exc:
            self.notify(str(exc), severity="error", title=command)
            return False
        return True

    def action_save_now(self) -> None:
        if self._no_trainer("save"):
            return
        if self._send("save"):
            self.notify("a checkpoint will be written at the next step", title="save")

    def _no_trainer(self, what: str) -> bool:
        """True (and a notice saying why) when no trainer is alive to take a command: nothing to ask about."""
        from engine.run.status import trainer_pid

        if trainer_pid(self.history.paths.root) is not None:
            return False
        self.notify(f"no trainer is running for this run ({self.history.summary.status}): nothing to {what}",
                    title=what)
        return True

    def action_stop_run(self) -> None:
        if self._no_trainer("stop"):
            return

        def answered(confirmed: bool | None) -> None:
            if confirmed and self._send("stop"):
                self.notify("the run saves its adapter and stops at the next step", title="stop")

        self.app.push_screen(ConfirmScreen(f"Stop {self.history.summary.run_id}? The adapter is saved first."),
                             answered)

    def action_extend(self) -> None:
        if self._no_trainer("extend"):
            return
        if self.history.summary.deadline_at is None:
            self.notify("this run has no session clock (session.budget): nothing to extend", title="extend")
            return

        def answered(duration: str | None) -> None:
            if not duration:
                return
            from engine.config import parse_duration

            if self._send("extend", seconds=parse_duration(duration)):
                self.notify(f"session extended by {duration} at the next step", title="extend")

        self.app.push_screen(ExtendScreen(), answered)

    def action_eval_report(self) -> None:
        """The run's before/after report: once training has finished, or a report was written already."""
        from engine.eval.report import report_folders
        from tui.screens.evaluation import EvalScreen

        if self.history.summary.status in ("starting", "running") and not report_folders(self.history.paths.root):
            self.notify("the report compares the finished adapter with the base: press v once training ends "
                        "(or set eval.after_training = true)", title="eval")
            return
        self.app.push_screen(EvalScreen(self.history.paths.root))

    def action_export_run(self) -> None:
        """Export the finished run: merged model, GGUF files, Modelfile."""
        from tui.screens.export import ExportScreen

        if self.history.summary.status in ("starting", "running"):
            self.notify("export the adapter once training ends (x stops it and saves)", title="export")
            return
        self.app.push_screen(ExportScreen(self.history.paths.root))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
