"""Option types shared by the commands (one declaration each)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["DatasetConfig", "DatasetSplit", "Debug", "Model", "ModelRevision", "PrecisionOpt",
           "TrustRemoteCode"]  # fmt: skip

Model = Annotated[
    str | None,
    typer.Option(help="Local transformers folder, a .gguf file, a hub id ORG/NAME, or 'default'."),
]
ModelRevision = Annotated[
    str | None,
    typer.Option("--model-revision", "--model_revision",
                 help="Branch, tag or commit of a hub --model (default: main)."),
]  # fmt: skip
DatasetConfig = Annotated[
    str | None,
    typer.Option("--dataset-config", "--dataset_config",
                 help="Configuration (subset) of a hub --dataset."),
]  # fmt: skip
DatasetSplit = Annotated[
    str | None, typer.Option("--dataset-split", help="Split of a hub --dataset.")
]
PrecisionOpt = Annotated[
    str, typer.Option(help="auto (bf16 where the hardware runs it natively, else fp32) | fp32 | "
                           "bf16 | fp16 (CUDA)"),
]  # fmt: skip
TrustRemoteCode = Annotated[bool, typer.Option(help="Allow model code from the folder.")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks.")]
