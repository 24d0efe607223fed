"""The FLOPs of a training step, counted from the model's shape, and the model FLOPs utilisation.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM, appendix B) is the FLOPs a step must
do by the model's arithmetic, divided by the step's time and the device's peak: recomputation
that gradient checkpointing adds is not counted (that would be hardware FLOPs), nor anything an
implementation saves (tidpo's head projects response positions only; the count still has the
full head at every position, so TRL and tidpo are counted alike). A matrix product of an
``[m, k]`` and a ``[k, n]`` matrix is ``2 m k n`` FLOPs. For a decoder of ``L`` layers, ``P``
matrix parameters (every layer's q, k, v, o, gate, up and down projections, and the output head
``V x d``; embeddings looked up, not multiplied) and ``a = heads x head_dim`` query width:

* forward of a sequence of ``T`` tokens: ``F(T) = 2 P T + A(T)``, with causal attention
  ``A(T) = 2 L a T (T + 1)`` (``QK^T`` and ``PV`` over the ``T (T + 1) / 2`` query-key pairs a
  causal mask keeps, ``2 a`` FLOPs each);
* forward and backward (gradients of inputs and weights): ``3 F(T)``;
* attribution (Eq. 5-6): a backward to the input embeddings only: the input gradients of every
  layer's projections ``2 P_body T`` (``P_body``: ``P`` without the head, whose target is one
  logit a row) and attention's backward ``2 A(T)``;
* sampling an anchor of ``n`` tokens after a context of ``c``: the prefill ``F(c)`` less the
  head at all but the last position, then per new token ``2 P + 4 L a (c + t)`` (one query
  against the ``c + t`` cached keys).

A step of ``B`` pairs counts, per chosen and rejected row, ``3 F`` for the policy, ``F`` for a
live reference (not a precomputed one) and the attribution where the objective has it; with
anchors, each sampled anchor's decoding and its row's ``3 F`` (policy) and ``F`` (reference),
averaged over the steps of the run (a refresh window samples for all its steps at once).

`peak_tflops` is the device's dense peak from `PEAK_TFLOPS`, its vendor's datasheet figure
(the sparse figure halved); ``None`` on a CPU and on an unlisted GPU (give ``--peak-tflops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PEAK_TFLOPS", "ModelShape", "decode_flops", "forward_flops", "mfu", "peak_tflops",
           "step_flops"]  # fmt: skip

PEAK_TFLOPS: list[tuple[str, float, float]] = [
    # (name fragment, bf16/fp16 dense TFLOP/s, fp32 TFLOP/s without TF32); the first match wins
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM 1979 bf16 with sparsity,
    # fp32 67; PCIe 1513 / 51; NVL 1671 / 60. H200 datasheet (nvidia.com/en-us/data-center/h200):
    # 1979 / 67 (SXM). A100 datasheet: 624 / 19.5. L40S: 733 / 91.6. L4: 242 / 30.3.
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("A100", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
]
"""Dense peak TFLOP/s by GPU name (`torch.cuda.get_device_name` contains the fragment)."""


def peak_tflops(device_name: str | None, precision: str) -> float | None:
    """The dense peak of ``device_name`` in ``precision`` (``bf16``/``fp16``: tensor cores;
    ``fp32``: without TF32, PyTorch's default), or None when not listed."""
    if not device_name:
        return None
    for fragment, half, single in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return single if precision == "fp32" else half
    return None


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a decoder (module docstring)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """The shape of a transformers Llama-style config (``head_dim`` defaults to
        ``hidden / heads``)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(int(text.num_hidden_layers), int(text.hidden_size), heads,
                   int(getattr(text, "num_key_value_heads", None) or heads), int(head_dim),
                   int(text.intermediate_size), int(text.vocab_size))  # fmt: skip

    @property
    def attention_width(self) -> int:
        """``a``: heads x head_dim (the queries' width)."""
        return self.heads * self.head_dim

    @property
    def body_params(self) -> int:
        """Matrix parameters of the layers: q, o (``d x a``), k, v (``d x kv_heads x
        head_dim``), gate, up and down (``d x intermediate``)."""
        d, a, kv = self.hidden, self.attention_width, self.kv_heads * self.head_dim
        return self.layers * (2 * d * a + 2 * d * kv + 3 * d * self.intermediate)

    @property
    def matmul_params(self) -> int:
        """``P``: the layers' matrix parameters and the output head (``V x d``)."""
        return self.body_params + self.vocab * self.hidden


def _attention(shape: ModelShape, length: float) -> float:
    """``A(T)``: causal attention's forward FLOPs over a sequence of ``length`` tokens."""
    return 2.0 * shape.layers * shape.attention_width * length * (length + 1)


def forward_flops(shape: ModelShape, length: float) -> float:
    """``F(T) = 2 P T + A(T)``: one forward of ``length`` tokens, the head at every position."""
    return 2.0 * shape.matmul_params * length + _attention(shape, length)


def decode_flops(shape: ModelShape, context: float, new: float) -> float:
    """Sampling ``new`` tokens after ``context`` tokens with a KV cache (module docstring)."""
    prefill = forward_flops(shape, context) - 2.0 * shape.vocab * shape.hidden * (context - 1)
    steps = max(round(new) - 1, 0)  # the prefill's logits give the first new token
    cached = sum(context + t for t in range(1, steps + 1))
    return (
        prefill
        + steps * 2.0 * shape.matmul_params
        + 4.0 * shape.layers * (shape.attention_width * cached)
    )


def step_flops(
    shape: ModelShape,
    lengths: list[float],
    *,
    reference: bool,
    attribution: bool,
    anchors: tuple[float, float, float] | None = None,
) -> float:
    """Model FLOPs of one step (module docstring).

    Args:
        lengths: the tokens of each chosen and rejected row of the step.
        reference: whether a live reference model scores the rows.
        attribution: whether the step takes the attribution backward (Eq. 5-6).
        anchors: ``(rows, mean context, mean new tokens)`` of the anchors this step samples and
            trains, on average over the run's steps; None without policy anchors.
    """
    per_row = 3.0 + (1.0 if reference else 0.0)
    total = 0.0
    for t in lengths:
        total += per_row * forward_flops(shape, t)
        if attribution:
            total += 2.0 * shape.body_params * t + 2.0 * _attention(shape, t)
    if anchors is not None:
        rows, context, new = anchors
        total += rows * (decode_flops(shape, context, new)
                         + per_row * forward_flops(shape, context + new))  # fmt: skip
    return total


def mfu(flops: float | None, seconds: float | None, peak: float | None) -> float | None:
    """``flops / (seconds x peak TFLOP/s)``, or None when any is unknown."""
    if not flops or not seconds or not peak:
        return None
    return flops / (seconds * peak * 1e12)
