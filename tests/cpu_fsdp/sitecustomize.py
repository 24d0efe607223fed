"""Test-only: FSDP2 on a CPU (gloo), for the multi-process tests on a machine without GPUs.

accelerate 1.15 decides FSDP in ``AcceleratorState.__init__`` for accelerator devices only (CUDA,
XPU, NPU, ...); on a CPU ``ACCELERATE_USE_FSDP=true`` leaves ``DistributedType.MULTI_CPU`` (tidpo
then refuses to train: `tidpo.training.sharding.fsdp_autocast`). PyTorch's ``fully_shard`` itself
runs on a CPU with gloo, so this sets what accelerate's accelerator-device branch would have set
-- ``distributed_type = FSDP`` on the accelerator's state and on the partial state (accelerate's
private ``_shared_state``: why this lives in the tests, not in tidpo), and the plugin, its mixed
precision set as accelerate sets it -- at the end of ``Accelerator.__init__``. From then on
accelerate's own FSDP2 path runs (``fsdp2_prepare_model``, its state-dict and checkpoint functions)
and tidpo's code is the code a GPU run executes.

Python imports this file as ``sitecustomize`` in every process whose ``PYTHONPATH`` holds this
folder (`tests/cpu_fsdp.py` ``env()``): the test's worker, ``tidpo train --sharding fsdp2``, and the
processes ``accelerate launch`` starts. It does nothing without ``ACCELERATE_USE_FSDP=true``.
"""

from __future__ import annotations

import os
from typing import Any


def _install() -> None:
    import accelerate
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    init = accelerate.Accelerator.__init__

    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        state = self.state
        if state.distributed_type != DistributedType.MULTI_CPU:
            return
        plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    accelerate.Accelerator.__init__ = patched  # type: ignore[method-assign]


if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
    _install()
