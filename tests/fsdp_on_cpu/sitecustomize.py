"""Test shim, on the ranks' PYTHONPATH only: lets accelerate shard a model (FSDP2) over CPU processes (gloo).

Accelerate turns FSDP on only for GPU-like devices; on CPUs it silently trains DistributedDataParallel. torch's
FSDP2 itself runs on CPU over gloo, so once accelerate's state says FSDP, the same Trainer path a GPU takes runs
here: every rank holds shards, gathers a layer for its forward, and reduce-scatters the gradients. Nothing else is
changed. It also tells the engine (LORADECK_FSDP_ON_CPU) that FSDP is possible without CUDA.
"""

import os
import sys

os.environ["LORADECK_FSDP_ON_CPU"] = "1"


def _teach_accelerate() -> None:
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__
    if getattr(original, "loradeck_shim", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    init.loradeck_shim = True
    state.AcceleratorState.__init__ = init


class _AfterAccelerateState:
    """Applies the shim the moment `accelerate.state` is first imported (importing it here would slow every
    Python start on this path)."""

    def find_spec(self, name, path=None, target=None):
        if name != "accelerate.state":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            _teach_accelerate()

        loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _AfterAccelerateState())
