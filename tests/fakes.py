"""Fakes at true boundaries only: NVML on a machine without a GPU."""

from __future__ import annotations

import itertools
import math

from engine.run.telemetry import DeviceSnapshot

GIB = 1024 ** 3


class FakeT4Backend:
    """Two Tesla T4s as NVML would report them mid-training: VRAM climbs, utilisation wobbles."""

    def __init__(self):
        self.ticks = itertools.count()

    def devices(self) -> list[DeviceSnapshot]:
        tick = next(self.ticks)
        return [DeviceSnapshot(index=index, name="Tesla T4", utilization_pct=round(88 + 8 * math.sin(tick / 3 + index)),
                               memory_used=int((9.5 + min(tick, 20) * 0.2 - 4 * index) * GIB),
                               memory_total=15 * GIB, temperature_c=61 + index + tick % 4,
                               power_w=round(62.5 + 5 * math.cos(tick / 2), 1), power_limit_w=70.0)
                for index in range(2)]


class NoDriverBackend:
    """NVML present but every call failing, as in a container without the driver."""

    available = False

    def devices(self) -> list[DeviceSnapshot]:
        return []


class RecordedChatWorker:
    """The chat worker protocol replayed from a recording of the real worker (bundled model + the demo adapter),
    for layout snapshots: the process boundary is the only thing replaced, and every figure is fixed."""

    ANSWERS = {"base": "The capital of Norway is Oslo.",
               "demo": "ANSWER: Oslo\nREASON: Oslo is the seat of the national government of Norway."}
    MEMORY = {"base_bytes": 538060288, "adapter_bytes": {"demo": 19537920}, "process_rss": 490270720}

    def __init__(self, on_event):
        self.on_event = on_event
        self.process = None

    def _emit_later(self, events) -> None:
        import threading

        def run():
            for event in events:
                self.on_event(event)
        threading.Thread(target=run, daemon=True).start()

    def start(self, base, adapters=(), *, load_in_4bit=False) -> None:
        self._emit_later([{"event": "ready", "base": base, "labels": ["base", "demo"], "adapters": {"demo": "x"},
                           "memory": self.MEMORY}])

    def generate(self, request_id, panes, settings) -> bool:
        events = []
        for index, pane in enumerate(panes):
            for word in self.ANSWERS[pane["label"]].split(" "):
                events.append({"event": "text", "id": request_id, "pane": index, "text": word + " "})
        events.append({"event": "done", "id": request_id, "seconds": 3.4, "first_token_seconds": 0.45,
                       "tokens_per_second": 8.0,
                       "answers": [{"label": p["label"], "text": self.ANSWERS[p["label"]], "new_tokens": 9,
                                    "stopped_by": "eos"} for p in panes]})
        self._emit_later(events)
        return True

    def add_adapter(self, path) -> bool:
        return False

    def cancel(self) -> bool:
        return True

    def restart(self) -> None:
        self.start(None)

    def stop(self, timeout: float = 5.0) -> None:
        pass
