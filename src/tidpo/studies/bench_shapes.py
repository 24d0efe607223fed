"""The model shapes `tidpo bench --shape` builds from a config, with random weights (no download).

* ``135m``: SmolLM2-135M's architecture (the default model's: hidden 576, 30 layers, 9 heads, 3
  KV heads, intermediate 1536, 49152 tokens, tied embeddings).
* ``1b``: Llama-3.2-1B's (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192,
  128256 tokens, tied embeddings, its llama3 RoPE scaling), the paper's model family at the size
  users fine-tune on one GPU.

``toy=True`` keeps a shape's vocabulary and family but scales the network down to `TOY` (hidden
64, 2 layers): for tests and the CPU dry run of scripts/gpu_check.sh, never for a measurement.
Token ids come from the bench's tokenizer (SmolLM2's 49152 tokens fit both vocabularies); its
special tokens are the model's. Weights are drawn from ``seed`` on the device the model will run
on (a 1B model is initialised on the GPU in a fraction of the CPU's time).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SHAPES", "TOY", "build_model", "shape_config"]

SHAPES: dict[str, dict[str, Any]] = {
    "135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "tie_word_embeddings": True,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
    },
}
"""Llama configurations (transformers ``LlamaConfig`` fields) of the named shapes."""

TOY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
"""What ``toy=True`` overrides (the vocabulary and the rest stay the shape's)."""


def shape_config(name: str, toy: bool = False, tokenizer: Any = None) -> Any:
    """The ``LlamaConfig`` of shape ``name`` (scaled down with ``toy``), its special token ids
    those of ``tokenizer`` when given."""
    from transformers import LlamaConfig

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r} (choose from {', '.join(SHAPES)})")
    fields = {**SHAPES[name], **(TOY if toy else {})}
    if tokenizer is not None:
        fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                      else tokenizer.eos_token_id)  # fmt: skip
    return LlamaConfig(**fields)


def build_model(name: str, toy: bool, tokenizer: Any, device: str, seed: int = 0) -> Any:
    """A causal LM of shape ``name``, fp32 weights drawn from ``seed`` on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = shape_config(name, toy, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
