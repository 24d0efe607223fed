"""Device and precision, chosen by the hardware: bf16 autocast only where it runs natively.

``precision="auto"`` (every command's default) picks bf16 autocast on a CUDA GPU with bf16
support and on a CPU with native bf16 instructions (AVX512-BF16 or AMX), and fp32 everywhere
else: on a CPU without them bf16 is emulated and about 14x slower than fp32. ``"bf16"`` and
``"fp32"`` force a choice; ``"fp16"`` (autocast with the Trainer's loss scaling) is CUDA-only.
`choose_precision` returns the choice with the reason, which every command prints first.

The hardware probes (`cuda_available`, `cuda_bf16`, `cpu_native_bf16`) are module functions so
that tests can stub them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from tidpo.errors import TidpoError

__all__ = [
    "PRECISIONS",
    "Precision",
    "PrecisionError",
    "choose_precision",
    "cpu_native_bf16",
    "cuda_available",
    "cuda_bf16",
    "default_device",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class PrecisionError(TidpoError, ValueError):
    """A precision the hardware cannot run (fp16 without a GPU) or an unknown name."""


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable."""
    return torch.cuda.is_available()


def cuda_bf16() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (Ampere and newer)."""
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def cpu_native_bf16() -> str | None:
    """The CPU's native bf16 instruction set (``"AMX"`` or ``"AVX512-BF16"``), or None."""
    cpu: Any = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def default_device(use_cpu: bool = False) -> torch.device:
    """``cuda`` when a GPU is usable (and not ``use_cpu``), else ``cpu``."""
    return torch.device("cuda" if not use_cpu and cuda_available() else "cpu")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32, bf16, fp16), the device type and why."""

    name: str
    device: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """An autocast region in this precision on its device (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=self.dtype)

    def describe(self) -> str:
        """``precision: bf16 autocast on cpu (this CPU has native bf16: AVX512-BF16)``."""
        what = self.name if self.name == "fp32" else f"{self.name} autocast"
        return f"precision: {what} on {self.device} ({self.reason})"


def choose_precision(requested: str = "auto", use_cpu: bool = False) -> Precision:
    """Resolve ``requested`` (one of `PRECISIONS`) for this machine; see the module docstring.

    Raises `PrecisionError` for an unknown name, fp16 without a GPU, or bf16 on a GPU without
    bf16 support.
    """
    if requested not in PRECISIONS:
        raise PrecisionError(
            f"precision: must be one of {', '.join(PRECISIONS)}; got {requested!r}"
        )
    device = default_device(use_cpu).type
    isa = cpu_native_bf16() if device == "cpu" else None
    native = cuda_bf16() if device == "cuda" else isa is not None
    has = "this GPU supports bf16" if device == "cuda" else f"this CPU has native bf16 ({isa})"
    if requested == "fp16":
        if device != "cuda":
            raise PrecisionError("precision: fp16 needs a CUDA GPU; on a CPU use fp32 or bf16")
        return Precision("fp16", device, "asked for; the Trainer scales the loss")
    if requested == "fp32":
        return Precision("fp32", device, "asked for")
    if requested == "bf16":
        if device == "cuda" and not native:
            raise PrecisionError("precision: bf16 is not supported by this GPU; use fp32 or fp16")
        if native:
            return Precision("bf16", device, f"asked for; {has}")
        return Precision("bf16", device, "asked for; this CPU has no native bf16, so it is "
                                         "emulated and about 14x slower than fp32")  # fmt: skip
    if native:
        return Precision("bf16", device, f"auto: {has}")
    lacks = (
        "this GPU has no bf16 support"
        if device == "cuda"
        else "this CPU has no native bf16 (no AVX512-BF16 or AMX)"
    )
    return Precision("fp32", device, f"auto: {lacks}")
