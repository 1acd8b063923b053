"""Fakes at true boundaries only: NVML on a machine without a GPU."""

from __future__ import annotations

import itertools
import math

from engine.telemetry import DeviceSnapshot

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
