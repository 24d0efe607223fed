"""The Trainer's side of the speed options (docs/performance.md): the fused head's budget and
implementation around every loss computation (`SpeedTrainer`).

``lm_head_chunk_mb`` and ``fused_head`` (`TIDPOConfig`) become the `tidpo.functional.HeadSettings`
of the step: `tidpo.functional.lm_head_logps` reads them in every forward of the step (policy,
reference, anchors; sharded steps too), and each backward uses what its forward chose. On a GPU
the default budget is `GPU_CHUNK_MB`: the head of a short batch runs in one chunk, its softmax
kept for the backward; on a CPU the default keeps the chunking of before.

With ``torch_compile`` (TrainingArguments' own flag: accelerate compiles the prepared policy)
the compiled backward must allow a second backward through the same graph: the attribution
(Eq. 5-6) takes its gradient with ``retain_graph=True`` before the loss's backward, which
AOTAutograd's donated buffers forbid, so they are turned off for the process.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tidpo.functional import HeadSettings, head_settings
from tidpo.training.anchors import AnchorWindowTrainer

__all__ = ["GPU_CHUNK_MB", "SpeedTrainer", "step_head_settings"]

GPU_CHUNK_MB = 1024
"""The fused head's default chunk budget on a GPU (MiB of fp32 ``[rows, vocab]``): one chunk for
2 pairs x 512 tokens at a 49k vocabulary (about 350 MB), chunks of about 2,000 rows at 128k."""


def step_head_settings(args: Any) -> HeadSettings:
    """The `HeadSettings` of a run's steps, from its config (``lm_head_chunk_mb``,
    ``fused_head``, and its device: `GPU_CHUNK_MB` on a GPU when no budget is given)."""
    mb = args.lm_head_chunk_mb
    if mb is None and args.precision_choice.device == "cuda":
        mb = GPU_CHUNK_MB
    return HeadSettings(chunk_bytes=None if mb is None else int(mb) << 20, impl=args.fused_head)


class SpeedTrainer(AnchorWindowTrainer):
    """`tidpo.training.trainer.TIDPOTrainer`'s base: every loss computation (training and
    evaluation steps) runs with the step's head settings (`step_head_settings`); with
    ``torch_compile`` the compiled backward can run twice on one graph (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        if getattr(config, "torch_compile", False):
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
        super().__init__(*args, **kwargs)

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack: contextlib.ExitStack = super().compute_loss_context_manager()
        stack.enter_context(head_settings(step_head_settings(self.args)))
        return stack
