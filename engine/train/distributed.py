"""Several training processes, one run: ranks, launching, and decisions every rank takes together.

The processes are started by `accelerate launch` (which runs torch.distributed's launcher), so accelerate's own
configs work; the Trainer sets up DistributedDataParallel (NCCL on GPUs, gloo on CPUs). Rank 0 owns the run
directory — events, checkpoints, bundles, probes, control commands, the session clock — and every step its
decision (stop or go, saves due) reaches every rank in one collective, so no rank waits alone in a collective
the others have left.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process, from the launcher's environment; (0, 1) when launched alone."""
    try:
        return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 0, 1


def resolve_processes(setting: int) -> int:
    """How many processes `distributed.processes` asks for: 0 means one per visible CUDA GPU (one without)."""
    if setting > 0:
        return setting
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def launch_command(processes: int, module_args: list[str]) -> list[str]:
    """The argv that starts `processes` ranks of `python -m <module_args>` through accelerate's launcher on this
    machine (one node; a free local port for the rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
            "--num_processes", str(processes), "--main_process_port", str(port), "--dynamo_backend", "no",
            "--mixed_precision", "no", "-m", *module_args]


def agree(local: Any, main: Any) -> tuple[Any, list[Any]]:
    """Every rank calls this at the same point: returns (rank 0's `main`, every rank's `local`). One collective;
    without a process group (one process) it costs nothing."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return main, [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (local, main))
    return gathered[0][1], [item[0] for item in gathered]


class SilentEvents:
    """What a rank other than 0 writes to the run's event log: nothing (rank 0 speaks for the run)."""

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """The event, not written."""
        return {"type": event_type, **fields}

    def close(self) -> None:
        """Nothing to close."""
