"""Several training processes, one run: ranks, launching, and decisions every rank takes together.

The processes are started by `accelerate launch` (which runs torch.distributed's launcher), so accelerate's own
configs work; the Trainer sets up DistributedDataParallel (NCCL on GPUs, gloo on CPUs), or with
`distributed.strategy = "fsdp"` accelerate's FSDP2, every rank holding a shard of each weight. Rank 0 owns the run
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


# Accelerate shards models (FSDP) only across GPUs. The tests teach it to shard over CPU processes (gloo) with a
# shim on the ranks' PYTHONPATH, which sets this so the engine lets the run start.
FSDP_ON_CPU_ENV = "LORADECK_FSDP_ON_CPU"


def check_strategy(strategy: str, device: str) -> None:
    """Refuse a strategy this machine cannot run, in one line, before any process starts or model loads."""
    from engine.errors import ConfigError

    if strategy == "fsdp" and not device.startswith("cuda") and os.environ.get(FSDP_ON_CPU_ENV) != "1":
        raise ConfigError("distributed.strategy = \"fsdp\" shards the model across CUDA GPUs and none is visible "
                          "— use distributed.strategy=ddp here")


def shards_model(strategy: str, processes: int | None = None) -> bool:
    """Whether a run's weights are sharded over its processes (FSDP with more than one): this launched run's, or
    one planned for `processes`."""
    return strategy == "fsdp" and (process_rank()[1] if processes is None else processes) > 1


def fsdp_training_args() -> dict[str, Any]:
    """TrainingArguments for FSDP through accelerate: FSDP2 (per-parameter sharding, so the frozen base and the
    trainable LoRA weights of one layer share a unit), one unit per decoder layer (the model's own
    `_no_split_modules`), full weights gathered for a layer's forward and freed after it. Checkpointing stays the
    model's own (`train.gradient_checkpointing`): FSDP's activation checkpointing wraps every layer in a module
    whose name PEFT's adapter saving does not expect."""
    return {"fsdp": True,
            "fsdp_config": {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
                            "activation_checkpointing": False}}


def full_trainable_state(model) -> dict[str, Any] | None:
    """The trainable weights (the adapter) whole, gathered from every rank's shard, on CPU; every rank must call
    it at the same point (one collective per tensor). None when the weights are not sharded."""
    from torch.distributed.tensor import DTensor

    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not any(isinstance(param, DTensor) for _, param in trainable):
        return None
    return {name: (param.full_tensor() if isinstance(param, DTensor) else param).detach().cpu()
            for name, param in trainable}


def held_weight_bytes(model) -> int:
    """Bytes of model weights this process holds: every parameter whole, or only its own shard of each one a
    strategy shards (FSDP's DTensor parameters)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for param in model.parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        total += local.numel() * local.element_size()
    return total


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


def leave_process_group() -> None:
    """Shut this rank's process group down before the interpreter exits (local to this rank, no collective).
    Left to interpreter exit, gloo's connections close in whatever order destructors run, and a rank can end
    with an error after the run was saved; call it only once every collective of the run is behind this rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class SilentEvents:
    """What a rank other than 0 writes to the run's event log: nothing (rank 0 speaks for the run)."""

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """The event, not written."""
        return {"type": event_type, **fields}

    def close(self) -> None:
        """Nothing to close."""
