"""Chat: base and adapters answer side by side, streaming, with blind A/B rating.

The models live in a separate worker process (`engine.chat.worker`): one copy
of the base weights, adapters switched per row of one batched `generate`. A
crash or out-of-memory there is reported here and the worker is restarted;
the conversations on screen are kept.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Input, Label, Static

from engine.chat.generation import BASE_LABEL, GenerationSettings, word_diff
from engine.chat.client import ChatWorkerClient
from engine.chat.rating import RatingLog, blind_sides, tally
from tui.format import format_bytes

@dataclass
class PaneState:
    """What one pane shows: its model's conversation plus the answer streaming in."""

    label: str
    messages: list[dict[str, str]] = field(default_factory=list)
    streaming: str | None = None
    note: str = ""

    def last_answer(self) -> str:
        if self.streaming is not None:
            return self.streaming
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")


@dataclass
class BlindRound:
    """One blind comparison: the prompt, which label sits on which side, and the verdict once rated."""

    messages: list[dict[str, str]]
    left: str
    right: str
    answers: tuple[str, str] | None = None
    verdict: str | None = None


def pane_text(pane: PaneState, colours: dict[str, str]) -> Text:
    """A pane's conversation as Rich text: user turns in the accent colour, answers plain, a cursor while streaming."""
    text = Text()
    for message in pane.messages:
        if message["role"] == "system":
            text.append(f"system: {message['content']}\n\n", style="dim italic")
        elif message["role"] == "user":
            text.append(f"› {message['content']}\n", style=f"bold {colours.get('accent', '')}")
        else:
            text.append(f"{message['content']}\n\n")
    if pane.streaming is not None:
        text.append(pane.streaming)
        text.append("▌", style=colours.get("primary", ""))
    if pane.note:
        text.append(f"\n{pane.note}", style=colours.get("error", ""))
    return text


def memory_line(memory: dict, labels: list[str]) -> str:
    """'base 538 MB (one copy) + 1 adapter 19 MB · worker RSS 1.1 GB'."""
    adapters = memory.get("adapter_bytes") or {}
    parts = [f"base {format_bytes(memory.get('base_bytes'))} (one copy)"]
    if adapters:
        parts.append(f"+ {len(adapters)} adapter{'s' if len(adapters) > 1 else ''} "
                     f"{format_bytes(sum(adapters.values()))}")
    line = " ".join(parts)
    if memory.get("process_rss"):
        line += f" · worker RSS {format_bytes(memory['process_rss'])}"
    if memory.get("cuda_allocated"):
        line += f" · CUDA {format_bytes(memory['cuda_allocated'])}"
    return line


def settings_line(settings: GenerationSettings) -> str:
    mode = "greedy" if settings.temperature == 0 else f"temperature {settings.temperature:g}, top-p {settings.top_p:g}"
    return f"{mode} · {settings.max_new_tokens} new tokens · seed {settings.seed}"


class PathScreen(ModalScreen[str | None]):
    """Ask for a path (adapter, prompts file)."""

    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, question: str, placeholder: str = "", value: str = ""):
        super().__init__()
        self.question, self.placeholder, self.value = question, placeholder, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            yield Input(value=self.value, placeholder=self.placeholder, id="path-input")
            yield Label("enter opens it · esc cancels", classes="dialog-hint")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SettingsScreen(ModalScreen[GenerationSettings | None]):
    """Edit temperature, top-p, max new tokens and seed for this chat session."""

    BINDINGS = [("escape", "cancel", "Cancel")]
    FIELDS = (("temperature", "temperature (0 = greedy)"), ("top_p", "top-p"),
              ("max_new_tokens", "max new tokens"), ("seed", "seed (same seed = comparable panes)"))

    def __init__(self, settings: GenerationSettings):
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("[b]Generation settings[/b] (enter to apply)")
            for name, caption in self.FIELDS:
                yield Label(caption)
                yield Input(value=f"{getattr(self.settings, name):g}", id=f"setting-{name}")
            yield Label("", id="settings-error", classes="field-error")

    @on(Input.Submitted)
    def submitted(self) -> None:
        try:
            values = {name: self.query_one(f"#setting-{name}", Input).value.strip() for name, _ in self.FIELDS}
            settings = GenerationSettings(max_new_tokens=int(values["max_new_tokens"]),
                                          temperature=float(values["temperature"]), top_p=float(values["top_p"]),
                                          seed=int(values["seed"]))
        except ValueError:
            self.query_one("#settings-error", Label).update("max new tokens and seed are whole numbers")
            return
        if settings.problem():
            self.query_one("#settings-error", Label).update(settings.problem())
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DiffScreen(ModalScreen[None]):
    """Two answers, word by word: removed words struck in red, added words in green."""

    BINDINGS = [("escape", "close", "Close"), ("q", "close", "Close")]

    def __init__(self, old_label: str, old: str, new_label: str, new: str):
        super().__init__()
        self.old_label, self.old, self.new_label, self.new = old_label, old, new_label, new

    def compose(self) -> ComposeResult:
        colours = self.app.theme_variables
        text = Text()
        for kind, piece in word_diff(self.old, self.new):
            if kind == "removed":
                text.append(piece, style=f"strike {colours.get('error', '')}")
            elif kind == "added":
                text.append(piece, style=f"bold {colours.get('success', '')}")
            else:
                text.append(piece)
        with Vertical(classes="dialog", id="diff-dialog"):
            yield Label(f"[b]{self.old_label}[/b] → [b]{self.new_label}[/b]   "
                        f"[$error]removed[/]  [$success]added[/]   (esc closes)")
            with VerticalScroll(id="diff-body"):
                yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)


class ChatScreen(Screen):
    """Side-by-side chat with the base model and adapters, and blind A/B rating."""

    BINDINGS = [
        Binding("ctrl+b", "toggle_blind", "Blind A/B", priority=True),
        Binding("f3", "load_prompts", "Prompts"),
        Binding("ctrl+n", "next_prompt", "Next prompt", priority=True),
        Binding("f2", "settings", "Settings"),
        Binding("f4", "add_adapter", "Adapter"),
        Binding("ctrl+y", "copy_answer", "Copy"),
        Binding("ctrl+d", "diff", "Diff", priority=True),
        Binding("ctrl+s", "save_conversation", "Save"),
        Binding("ctrl+r", "restart_worker", "Restart worker", show=False),
        Binding("escape", "cancel_or_back", "Back"),
        Binding("left,a,1", "rate('left')", "Left better", show=False),
        Binding("right,b,2", "rate('right')", "Right better", show=False),
        Binding("t,equals_sign", "rate('tie')", "Tie", show=False),
        Binding("x,0", "rate('both_bad')", "Both bad", show=False),
    ]
    FLUSH_SECONDS = 0.05
    AUTO_RESTARTS = 2

    def __init__(self, base: str, adapters: list[str] = (), *, load_in_4bit: bool = False,
                 ratings_dir: Path | None = None, prompts_source: Path | None = None,
                 client_factory=ChatWorkerClient, rate_again=None):
        super().__init__()
        self.rate_again = rate_again  # a RateAgain: blind, the DPO adapter against the one it started from
        self.base = base
        self.adapters = [str(a) for a in adapters]
        self.load_in_4bit = load_in_4bit
        self.ratings = RatingLog(ratings_dir or Path("runs") / "chat")
        self.prompts_source = prompts_source
        self.settings = GenerationSettings()
        self.labels: list[str] = []
        self.panes: list[PaneState] = []
        self.pane_widgets: list[VerticalScroll] = []
        self.pane_texts: list[Static] = []
        self.memory: dict = {}
        self.worker_state = "starting"
        self.request_id = 0
        self.generating = False
        self.dirty: set[int] = set()
        self.blind = False
        self.round: BlindRound | None = None
        self.prompt_set: list = []
        self.prompt_index = 0
        self.last_timing = ""
        self.last_reveal = ""
        self.restarts: list[float] = []
        self.closing = False
        self.rng = random.Random()
        self.client = client_factory(self._event_from_worker)
        self.title = "loradeck · chat"

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="chat-status")
        yield Static("", id="chat-tally")
        yield Horizontal(id="chat-panes")
        yield Input(placeholder="loading the models…", id="chat-input", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.client.start(self.base, self.adapters, load_in_4bit=self.load_in_4bit)
        self.set_interval(self.FLUSH_SECONDS, self._flush)
        self._update_status()
        self._update_tally()

    def on_unmount(self) -> None:
        self.closing = True
        self.client.stop(timeout=3)

    def _event_from_worker(self, event: dict) -> None:
        """Runs on the client's reader thread: hand the event to the UI thread."""
        try:
            self.app.call_from_thread(self._on_worker_event, event)
        except RuntimeError:  # the app is shutting down
            pass

    def _build_panes(self) -> None:
        """One pane per label (or the two blind sides), keeping each label's conversation."""
        old = {pane.label: pane for pane in self.panes}
        if self.blind and self.round:
            self.panes = [PaneState(self.round.left, list(self.round.messages)),
                          PaneState(self.round.right, list(self.round.messages))]
        elif self.blind:
            self.panes = []
        else:
            self.panes = [old.get(label) or PaneState(label) for label in self.labels]
        container = self.query_one("#chat-panes", Horizontal)
        container.remove_children()
        self.pane_widgets, self.pane_texts = [], []
        for index, pane in enumerate(self.panes):
            text = Static(pane_text(pane, self.app.theme_variables), classes="pane-text")
            scroll = VerticalScroll(text, classes="panel chat-pane")
            scroll.border_title = self._pane_title(index)
            self.pane_widgets.append(scroll)
            self.pane_texts.append(text)
        container.mount_all(self.pane_widgets or [Static(self._blind_hint(), classes="chat-empty")])

    def _pane_title(self, index: int) -> str:
        pane = self.panes[index]
        if not self.blind:
            return pane.label
        side = "A · left" if index == 0 else "B · right"
        if self.round and self.round.verdict:
            return f"{side} — {pane.label}"
        return side

    def _blind_hint(self) -> str:
        challenger = self._blind_pair()
        if challenger is None:
            return "Blind mode compares two models: add an adapter (F4) first."
        return (f"Blind A/B: {challenger[0]} vs {challenger[1]}, shuffled and unlabelled.\n"
                "Type a prompt, or load a prompt set (F3) and step through it.\n"
                "When both answers are in: ←/a left better · →/b right better · t tie · x both bad.")

    def _blind_pair(self) -> tuple[str, str] | None:
        """(challenger, reference): the first adapter against the base — or, rating a DPO run again, against the
        adapter it started from (the second)."""
        adapters = [label for label in self.labels if label != BASE_LABEL]
        if not adapters:
            return None
        if self.rate_again is not None and len(adapters) >= 2:
            return adapters[0], adapters[1]
        return adapters[0], BASE_LABEL

    def _start_rating_again(self) -> None:
        """One key from Home: blind mode on, the prompts rated before loaded, the first one asked."""
        self.action_toggle_blind()
        if self.rate_again.prompts:
            self.prompt_set, self.prompt_index = list(self.rate_again.prompts), 0
            self.action_next_prompt()

    # --------------------------------------------------------------- worker events
    def _on_worker_event(self, event: dict) -> None:
        if self.closing:
            return
        try:
            self._handle_worker_event(event)
        except NoMatches:  # the app is exiting and has already removed this screen's widgets
            pass

    def _handle_worker_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "status":
            self.worker_state = event.get("message", "")
        elif kind == "ready":
            self.labels = list(event["labels"])
            self.memory = event.get("memory") or {}
            self.worker_state = "ready"
            self._build_panes()
            self._set_input_ready()
            self._update_tally()
            if self.rate_again is not None and not self.blind:
                self._start_rating_again()
        elif kind == "adapter":
            self.labels.append(event["label"])
            self.memory = event.get("memory") or self.memory
            self.notify(f"adapter {event['label']} loaded")
            self._build_panes()
            self._update_tally()
        elif kind == "text" and event.get("id") == self.request_id and self.generating:
            pane = self.panes[event["pane"]]
            pane.streaming = (pane.streaming or "") + event["text"]
            self.dirty.add(event["pane"])
        elif kind == "done" and event.get("id") == self.request_id:
            self._finish_answers(event)
        elif kind == "error":
            self._on_error(event)
        elif kind == "exited":
            self._on_worker_exit(event)
        self._update_status()

    def _finish_answers(self, event: dict) -> None:
        self.generating = False
        answers = event.get("answers") or []
        for pane, answer in zip(self.panes, answers):
            pane.streaming = None
            pane.messages.append({"role": "assistant", "content": answer["text"]})
            if answer.get("stopped_by") == "cancelled":
                pane.note = "(stopped)"
        first = event.get("first_token_seconds")
        self.last_timing = (f"{len(answers)} pane{'s' if len(answers) > 1 else ''} in {event.get('seconds', 0):.1f} s"
                            + (f" · first token {first:.2f} s" if first is not None else "")
                            + f" · {event.get('tokens_per_second', 0):.0f} tok/s")
        self.dirty.update(range(len(self.panes)))
        if self.blind and self.round:
            self.round.answers = tuple(a["text"] for a in answers[:2])
            self._update_tally()
            self.query_one("#chat-input", Input).disabled = True
            self.query_one("#chat-panes").focus()
        else:
            self._set_input_ready()

    def _on_error(self, event: dict) -> None:
        message = event.get("message", "error")
        if event.get("fatal"):
            self.worker_state = f"error: {message}"
            self.notify(message, title="chat worker", severity="error", timeout=10)
            return
        self.notify(message, title="chat", severity="error", timeout=8)
        if event.get("id") == self.request_id and self.generating:
            self.generating = False
            for index, pane in enumerate(self.panes):
                pane.streaming = None
                pane.note = f"({message})"
                if pane.messages and pane.messages[-1]["role"] == "user":
                    pane.messages.pop()
                self.dirty.add(index)
            self.round = None if self.blind else self.round
            self._set_input_ready()

    def _on_worker_exit(self, event: dict) -> None:
        detail = event.get("message") or f"exit code {event.get('returncode')}"
        if self.generating:
            self._on_error({"id": self.request_id, "message": f"the worker stopped while answering: {detail}"})
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60]
        self.query_one("#chat-input", Input).disabled = True
        if len(self.restarts) < self.AUTO_RESTARTS:
            self.restarts.append(now)
            self.worker_state = f"worker stopped ({detail}) — restarting…"
            self.notify(f"the chat worker stopped ({detail}); restarting it", severity="warning")
            self.client.restart()
        else:
            self.worker_state = f"worker stopped ({detail}) — ctrl+r restarts it"
            self.notify(self.worker_state, severity="error", timeout=10)

    # ------------------------------------------------------------------ drawing
    def _flush(self) -> None:
        """Redraw panes whose text changed (coalesces a burst of tokens into one repaint)."""
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, set()
        for index in dirty:
            if index >= len(self.pane_widgets):
                continue
            scroll = self.pane_widgets[index]
            if not scroll.is_mounted:  # panes were just rebuilt and are still mounting: draw on the next tick
                self.dirty.add(index)
                continue
            self.pane_texts[index].update(pane_text(self.panes[index], self.app.theme_variables))
            scroll.border_title = self._pane_title(index)
            scroll.scroll_end(animate=False)

    def _update_status(self) -> None:
        state = self.worker_state
        if state == "ready":
            state = memory_line(self.memory, self.labels)
            if self.generating:
                state = "[$primary]answering…[/] (esc stops) · " + state
        parts = [state, settings_line(self.settings)]
        if self.last_timing:
            parts.append(self.last_timing)
        if self.prompt_set:
            parts.append(f"prompt {min(self.prompt_index, len(self.prompt_set))}/{len(self.prompt_set)}")
        self.query_one("#chat-status", Static).update(" · ".join(parts))

    def _update_tally(self) -> None:
        widget = self.query_one("#chat-tally", Static)
        pair = self._blind_pair()
        if not self.blind or pair is None:
            widget.display = False
            return
        widget.display = True
        result = tally(self.ratings.rows(), *pair)
        waiting = ""
        if self.round and self.round.answers and not self.round.verdict:
            waiting = "[b]rate:[/b] ←/a left better · →/b right better · t tie · x both bad\n"
        reveal = f"[$text-muted]{self.last_reveal}[/]\n" if self.last_reveal else ""
        before = ""
        if self.rate_again is not None and self.rate_again.before is not None:
            before = (f"[b]before DPO[/b] ({self.rate_again.before.challenger} vs base): "
                      f"{self.rate_again.before.summary()}\n[b]now:[/b] ")
        widget.update(f"{waiting}{reveal}{before}[b]tally:[/b] {result.summary()}\n"
                      f"[$text-muted]saved to {self.ratings.ratings_path} (+ preferences.jsonl for DPO)[/]")

    def _set_input_ready(self) -> None:
        field_ = self.query_one("#chat-input", Input)
        field_.disabled = self.worker_state != "ready"
        field_.placeholder = ("blind prompt (enter) · ctrl+n next from the set" if self.blind
                              else "message every pane (enter) · ctrl+b blind A/B · F3 prompt set")
        if not field_.disabled:
            field_.focus()

    # ------------------------------------------------------------------ sending
    @on(Input.Submitted, "#chat-input")
    def submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.send([{"role": "user", "content": text}], continue_conversation=True):
            event.input.value = ""

    def send(self, messages: list[dict[str, str]], *, continue_conversation: bool = False) -> bool:
        """Ask every pane (or the two blind sides) to answer; returns False when that cannot happen now."""
        if self.worker_state != "ready":
            self.notify("the models are not loaded yet", severity="warning")
            return False
        if self.generating:
            self.notify("still answering — esc stops it", severity="warning")
            return False
        if self.blind:
            pair = self._blind_pair()
            if pair is None:
                self.notify("blind mode needs an adapter: F4 adds one", severity="warning")
                return False
            if self.round and self.round.answers and not self.round.verdict:
                self.notify("rate this pair first (←/→/t/x)", severity="warning")
                return False
            left, right = blind_sides(pair, self.rng)
            self.round = BlindRound(list(messages), left, right)
            self._build_panes()
        else:
            for pane in self.panes:
                pane.note = ""
                if not continue_conversation:
                    pane.messages = []
                pane.messages.extend(dict(m) for m in messages)
        self.request_id += 1
        self.generating = True
        for pane in self.panes:
            pane.streaming = ""
        self.dirty.update(range(len(self.panes)))
        self.query_one("#chat-input", Input).disabled = True
        sent = self.client.generate(self.request_id, [{"label": p.label, "messages": p.messages} for p in self.panes],
                                    self.settings.to_dict())
        if not sent:
            self._on_error({"id": self.request_id, "message": "the chat worker is not running — ctrl+r restarts it"})
        self._update_status()
        self._update_tally()
        return sent

    # ------------------------------------------------------------------ actions
    def action_rate(self, verdict: str) -> None:
        if not (self.blind and self.round and self.round.answers and not self.round.verdict):
            return
        from engine.errors import LoradeckError

        round_ = self.round
        try:
            row = self.ratings.record(round_.messages, (round_.left, round_.answers[0]),
                                      (round_.right, round_.answers[1]), verdict, self.settings.to_dict())
        except LoradeckError as exc:  # the verdict is not lost from the screen: rate again once the folder works
            self.notify(str(exc), title="rating not saved", severity="error", timeout=10)
            return
        round_.verdict = verdict
        chosen = {"left": f"you preferred {round_.left}", "right": f"you preferred {round_.right}",
                  "tie": "you called it a tie", "both_bad": "you found both bad"}[verdict]
        self.last_reveal = f"last: A was {round_.left}, B was {round_.right} — {chosen}"
        self.dirty.update(range(len(self.panes)))
        self._update_tally()
        self.notify(self.last_reveal, timeout=3)
        self._set_input_ready()
        if row and self.prompt_set and self.prompt_index < len(self.prompt_set):
            self.action_next_prompt()
        elif self.prompt_set:
            self.notify("that was the last prompt of the set", timeout=5)

    def action_toggle_blind(self) -> None:
        if self.generating:
            self.notify("wait for the answers (or esc) before switching modes", severity="warning")
            return
        if not self.blind and self._blind_pair() is None:
            self.notify("blind mode compares an adapter with the base: add one first (F4)", severity="warning")
            return
        self.blind = not self.blind
        self.round = None
        self.last_reveal = ""
        self._build_panes()
        self._update_tally()
        self._set_input_ready()
        self.notify("blind A/B on: answers are shuffled and unlabelled" if self.blind else "blind A/B off")

    def action_load_prompts(self) -> None:
        default = str(self.prompts_source) if self.prompts_source else ""
        self.app.push_screen(PathScreen("Prompt set: a file (.txt one per line, or a dataset) or a run directory "
                                        "(its held-out rows)", "path", default), self._load_prompts)

    def _load_prompts(self, source: str | None) -> None:
        if not source:
            return
        from engine.errors import LoradeckError
        from engine.data.prompts import held_out_prompts, prompts_from_file

        path = Path(source).expanduser()
        try:
            items = held_out_prompts(path) if path.is_dir() else prompts_from_file(path)
        except LoradeckError as exc:
            self.notify(str(exc), title="prompts", severity="error", timeout=10)
            return
        self.prompt_set, self.prompt_index = items, 0
        self.notify(f"{len(items)} prompts loaded from {path}")
        self.action_next_prompt()

    def action_next_prompt(self) -> None:
        if not self.prompt_set:
            self.notify("no prompt set: F3 loads one", severity="warning")
            return
        if self.prompt_index >= len(self.prompt_set):
            self.notify("that was the last prompt of the set", timeout=5)
            return
        item = self.prompt_set[self.prompt_index]
        if self.send(item.messages):
            self.prompt_index += 1
            self._update_status()

    def action_settings(self) -> None:
        def apply(settings: GenerationSettings | None) -> None:
            if settings is not None:
                self.settings = settings
                self._update_status()
        self.app.push_screen(SettingsScreen(self.settings), apply)

    def action_add_adapter(self) -> None:
        def add(path: str | None) -> None:
            if path and not self.client.add_adapter(path):
                self.notify("the chat worker is not running — ctrl+r restarts it", severity="error")
        self.app.push_screen(PathScreen("Adapter: a PEFT folder, run directory, checkpoint or handoff bundle",
                                        "runs/my-run"), add)

    def _focused_pane(self) -> int:
        focused = self.focused
        while focused is not None:
            if focused in self.pane_widgets:
                return self.pane_widgets.index(focused)
            focused = focused.parent
        adapters = [i for i, p in enumerate(self.panes) if p.label != BASE_LABEL]
        return adapters[0] if adapters and not self.blind else 0

    def action_copy_answer(self) -> None:
        if not self.panes:
            return
        index = self._focused_pane()
        answer = self.panes[index].last_answer()
        if not answer:
            self.notify("nothing to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(answer)
        name = self._pane_title(index).split(" — ")[0] if self.blind else self.panes[index].label
        self.notify(f"copied {len(answer)} characters from {name}")

    def action_diff(self) -> None:
        if len(self.panes) < 2:
            self.notify("diff needs two panes", severity="warning")
            return
        index = self._focused_pane()
        other = 0 if index != 0 else 1
        if not self.blind and self.panes[other].label != BASE_LABEL:
            other = next((i for i, p in enumerate(self.panes) if p.label == BASE_LABEL and i != index), other)
        old, new = self.panes[other], self.panes[index]
        if not old.last_answer() or not new.last_answer():
            self.notify("diff needs an answer in both panes", severity="warning")
            return
        self.app.push_screen(DiffScreen(self._pane_title(other), old.last_answer(), self._pane_title(index),
                                        new.last_answer()))

    def action_save_conversation(self) -> None:
        if not any(pane.messages for pane in self.panes):
            self.notify("nothing to save yet", severity="warning")
            return
        folder = self.ratings.folder
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data = {"base": self.base, "settings": self.settings.to_dict(), "blind": self.blind,
                "panes": [{"label": p.label, "messages": p.messages} for p in self.panes]}
        lines = [f"# loradeck chat · {time.strftime('%Y-%m-%d %H:%M')}", "",
                 f"base `{self.base}` · {settings_line(self.settings)}", ""]
        for pane in self.panes:
            lines += [f"## {pane.label}", ""]
            for message in pane.messages:
                lines += [f"**{message['role']}**: {message['content']}", ""]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"conversation-{stamp}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
            target = folder / f"conversation-{stamp}.md"
            target.write_text("\n".join(lines), encoding="utf-8")
        except OSError as exc:
            self.notify(f"cannot save in {folder}: {exc.strerror or exc}", severity="error")
            return
        self.notify(f"saved {target} (+ .json)")

    def action_restart_worker(self) -> None:
        self.restarts = []
        self.worker_state = "restarting the worker…"
        self.generating = False
        self.client.restart()
        self._update_status()

    def action_cancel_or_back(self) -> None:
        if self.generating:
            self.client.cancel()
            return
        self.app.pop_screen()
