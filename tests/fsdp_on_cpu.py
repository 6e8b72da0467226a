"""Run a stage under Accelerate's FSDP2 on CPU processes (gloo): the sharded code paths, tested without GPUs.

    accelerate launch --config_file recipes/accelerate/fsdp.yaml --mixed_precision no --num_processes 2 \
        -m tests.fsdp_on_cpu pipeline.ppo --config recipes/tiny/ppo.yaml ...

Accelerate turns FSDP on for accelerators only; on CPU it quietly runs DDP. PyTorch's FSDP2 itself runs on CPU
with gloo, so this shim changes one thing: once Accelerate has set up its state from the launch config, it
records FSDP as the distributed type. Everything else is the real path: the shipped config, Accelerate's prepare
(`fully_shard` per decoder layer, weights broadcast from rank 0 under cpu_ram_efficient_loading), DTensor
weights, gathered saves and `save_state`. Each rank prints `FSDP2-SHARDED <class>` when prepare hands back a
sharded model, so a test can tell that the engine really ran.
"""

from __future__ import annotations

import importlib
import sys

import accelerate.accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init_state = AcceleratorState.__init__
_fsdp2_prepare_model = accelerate.accelerator.fsdp2_prepare_model


def _init_state_as_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init_state(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # Both singletons: every later AcceleratorState() copies PartialState's fields over its own.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


def _prepare_and_report(accelerator, model):
    from torch.distributed.fsdp import FSDPModule

    model = _fsdp2_prepare_model(accelerator, model)
    if isinstance(model, FSDPModule):
        print(f"FSDP2-SHARDED {type(model).__name__}", flush=True)
    return model


AcceleratorState.__init__ = _init_state_as_fsdp
accelerate.accelerator.fsdp2_prepare_model = _prepare_and_report

if __name__ == "__main__":
    stage = importlib.import_module(sys.argv[1])
    stage.main(sys.argv[2:])
