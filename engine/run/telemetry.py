"""GPU and host telemetry, the nvitop way: one guarded NVML call path, snapshot objects out.

Every NVML call goes through `NvmlBackend.call`, which returns None ("N/A")
instead of raising, so a machine without a GPU, a driver mismatch or a
container that hides devices never crashes the trainer or the UI. Colours and
thresholds are the TUI's business, not this module's.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable


@dataclass
class DeviceSnapshot:
    """One GPU at one instant; None means N/A."""

    index: int
    name: str | None
    utilization_pct: float | None
    memory_used: int | None
    memory_total: int | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None


class NvmlBackend:
    """pynvml behind a single guarded call path."""

    def __init__(self):
        self.available = False
        self.error: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.available = True
        except Exception as exc:  # no driver, no library, no device: all mean N/A
            self._nvml = None
            self.error = f"{type(exc).__name__}: {exc}"[:200]

    def call(self, function: str, *args: Any) -> Any:
        """`pynvml.<function>(*args)`, or None when it fails or NVML is absent."""
        if not self.available:
            return None
        try:
            return getattr(self._nvml, function)(*args)
        except Exception:
            return None

    def devices(self) -> list[DeviceSnapshot]:
        """A snapshot of every visible device (empty without NVML)."""
        count = self.call("nvmlDeviceGetCount") or 0
        snapshots = []
        for index in range(count):
            handle = self.call("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            name = self.call("nvmlDeviceGetName", handle)
            memory = self.call("nvmlDeviceGetMemoryInfo", handle)
            utilization = self.call("nvmlDeviceGetUtilizationRates", handle)
            temperature = self.call("nvmlDeviceGetTemperature", handle, 0)
            power = self.call("nvmlDeviceGetPowerUsage", handle)
            limit = self.call("nvmlDeviceGetEnforcedPowerLimit", handle)
            snapshots.append(DeviceSnapshot(
                index=index, name=name.decode() if isinstance(name, bytes) else name,
                utilization_pct=getattr(utilization, "gpu", None),
                memory_used=getattr(memory, "used", None), memory_total=getattr(memory, "total", None),
                temperature_c=temperature, power_w=power / 1000 if power is not None else None,
                power_limit_w=limit / 1000 if limit is not None else None))
        return snapshots


_backend: NvmlBackend | None = None
_backend_factory: Callable[[], Any] = NvmlBackend


def set_backend_factory(factory: Callable[[], Any]) -> None:
    """Inject a fake device backend (tests, recorded demos); it needs a `devices()` method."""
    global _backend, _backend_factory
    _backend_factory = factory
    _backend = None


def device_snapshots() -> list[DeviceSnapshot]:
    """Snapshots of every GPU, or [] where there is none."""
    global _backend
    if _backend is None:
        _backend = _backend_factory()
    return _backend.devices()


def process_memory() -> dict[str, int | None]:
    """This process's own torch allocator figures (CUDA) — device totals mislead in containers."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved(),
            "peak_allocated": torch.cuda.max_memory_allocated()}


def rank_memory(rank: int, weights: int | None = None) -> dict[str, Any]:
    """One training process's own figures, as rank 0 gathers them from every rank: its CUDA device, allocator
    figures, resident memory and (`weights`) the bytes of model weights it holds — all of them with DDP, its
    shard with FSDP."""
    import psutil

    figures: dict[str, Any] = {"rank": rank, **process_memory(), "rss": psutil.Process(os.getpid()).memory_info().rss}
    if weights is not None:
        figures["weights"] = weights
    try:
        import torch

        if torch.cuda.is_available():
            figures["device"] = torch.cuda.current_device()
    except ImportError:
        pass
    return figures


def host_snapshot() -> dict[str, float | int | None]:
    """Host RAM and CPU, and this process's resident memory."""
    import psutil

    memory = psutil.virtual_memory()
    process = psutil.Process(os.getpid())
    return {"ram_used": memory.total - memory.available, "ram_total": memory.total,
            "cpu_pct": psutil.cpu_percent(interval=None), "process_rss": process.memory_info().rss}


def collect_telemetry(ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The fields of one `telemetry` event (`ranks`: every training process's `rank_memory`, when several)."""
    fields = {"devices": [asdict(d) for d in device_snapshots()], "process": process_memory(), "host": host_snapshot()}
    if ranks:
        fields["ranks"] = ranks
    return fields


# Dense (no sparsity) tensor-core peaks in FLOP/s for the dtype LoRA trains in on each card (bf16; fp16 on cards
# without bf16), from NVIDIA's datasheets. Checked in order: the first pattern found in the device name wins.
DENSE_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", None),  # not published as a dense tensor figure: MFU is left unknown rather than guessed
    ("A10", 125e12),
    ("T4", 65e12),
    ("V100", 125e12),
)


def dense_peak_flops(device_name: str | None) -> float | None:
    """The device's dense tensor-core peak FLOP/s from `DENSE_PEAK_FLOPS`, or None when the card is not in the
    table (or there is no GPU): MFU is then shown as "—", never a guessed number."""
    if not device_name:
        return None
    import re

    for pattern, peak in DENSE_PEAK_FLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(pattern)}(?![A-Za-z0-9])", device_name):
            return peak
    return None


def lora_flops_per_token(parameters: int, layers: int, hidden: int, tokens_per_row: float) -> float:
    """Model FLOPs per trained token of LoRA / QLoRA: 4 × parameters (forward, and backward to the inputs of
    every frozen weight) plus causal attention, 6 × layers × hidden × row length (forward 2, backward 4)."""
    return 4.0 * parameters + 6.0 * layers * hidden * tokens_per_row


def model_flops_utilisation(tokens_per_s: float | None, flops_per_token: float | None,
                            peak_flops: float | None) -> float | None:
    """Achieved model FLOP/s over the device's dense peak, or None when any figure is unknown."""
    if not tokens_per_s or not flops_per_token or not peak_flops:
        return None
    return tokens_per_s * flops_per_token / peak_flops
