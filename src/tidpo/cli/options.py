"""Option types shared by the commands (one declaration each)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["Debug", "Model", "PrecisionOpt", "TrustRemoteCode"]

Model = Annotated[
    str | None, typer.Option(help="Local transformers folder, a .gguf file, or 'default'.")
]
PrecisionOpt = Annotated[
    str, typer.Option(help="auto (bf16 where the hardware runs it natively, else fp32) | fp32 | "
                           "bf16 | fp16 (CUDA)"),
]  # fmt: skip
TrustRemoteCode = Annotated[bool, typer.Option(help="Allow model code from the folder.")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks.")]
