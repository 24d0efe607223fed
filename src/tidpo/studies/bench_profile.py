"""The operator count and profile of one step of `tidpo bench` (``--op-count``, ``--profile``).

On a launch-bound GPU (small batches, short sequences) a step's time is about the number of
kernels it launches times the launch cost, whatever each computes. The count is taken with
``torch.profiler`` on one extra, untimed step after the timed ones, on any device:

* ``aten_ops``: every ATen operator dispatched (nested calls included: ``aten::linear`` and the
  ``aten::mm`` inside it are two): the Python and dispatcher work of the step;
* ``kernel_ops``: the ATen operators that do the work: not in `NO_KERNEL` (views, metadata,
  allocation) and calling no operator that does (``aten::linear`` -> ``aten::matmul`` ->
  ``aten::mm``: the ``mm`` counts, once): on a CPU the proxy of the kernels a GPU would launch
  for the same step (an operator that first calls a working one, as a multiplication by a Python
  number copying it into a tensor, counts as that one: one kernel, under the callee's name);
* ``cuda_launches`` (on a GPU): the kernel launches the CUDA runtime saw (and graph launches);
* ``kernel_ops_by_name``: the 30 most frequent of the ``kernel_ops``, with their counts (where a
  step's operators go, to compare with TRL's).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["NO_KERNEL", "op_counts", "start_profiler", "write_profile"]

NO_KERNEL = frozenset(
    f"aten::{name}"
    for name in (
        "as_strided", "view", "_unsafe_view", "_reshape_alias", "reshape", "transpose", "t",
        "expand", "permute", "unsqueeze", "squeeze", "slice", "select", "narrow", "split",
        "split_with_sizes", "unbind", "chunk", "unflatten", "flatten", "alias", "detach",
        "lift_fresh", "resolve_conj", "resolve_neg", "empty", "empty_strided", "empty_like",
        "result_type", "size", "stride", "is_nonzero", "numpy_T", "view_as", "expand_as",
        "contiguous", "_local_scalar_dense",
    )
)  # fmt: skip
"""Operators that launch no compute kernel (views, metadata, uninitialised allocation)."""
_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
             "cudaGraphLaunch")  # fmt: skip


def start_profiler(cuda: bool) -> Any:
    """A started ``torch.profiler.profile`` of the CPU (and CUDA when ``cuda``)."""
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=acts)
    prof.start()
    return prof


def op_counts(prof: Any) -> dict[str, Any]:
    """``{"aten_ops", "kernel_ops", "cuda_launches", "kernel_ops_by_name"}`` of a stopped
    profiler (module docstring)."""
    events = list(prof.events())
    aten = [e for e in events if e.name.startswith("aten::")]
    works: dict[int, bool] = {}

    def does_work(e: Any) -> bool:  # below it, some operator does work (or it does itself)
        if id(e) not in works:
            below = [does_work(c) for c in e.cpu_children]  # all of them: every subtree known
            works[id(e)] = any(below) or (e.name.startswith("aten::") and e.name not in NO_KERNEL)
        return works[id(e)]

    kernels = Counter(e.name for e in aten if e.name not in NO_KERNEL
                      and not any(does_work(c) for c in e.cpu_children))  # fmt: skip
    launches = sum(1 for e in events if e.name in _LAUNCHES)
    return {"aten_ops": len(aten), "kernel_ops": sum(kernels.values()), "cuda_launches": launches,
            "kernel_ops_by_name": dict(kernels.most_common(30))}  # fmt: skip


def write_profile(prof: Any, path: Path, header: str, cuda: bool) -> None:
    """The profiler's tables (by total and by self time; by device time on a GPU) to ``path``."""
    avg = prof.key_averages()
    parts = [header, "by total time", avg.table(sort_by="cpu_time_total", row_limit=45),
             "by self time", avg.table(sort_by="self_cpu_time_total", row_limit=30)]  # fmt: skip
    if cuda:
        parts += ["by device time", avg.table(sort_by="self_device_time_total", row_limit=40)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
