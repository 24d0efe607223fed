"""TRL configs run unchanged: `DPOConfig` field names translated to tidpo's, field by field.

A YAML file written for ``trl dpo --config`` (TRL 1.16's `DPOConfig` plus its script arguments
``model_name_or_path`` and ``dataset_name``) is recognised by its TRL-only keys. The script's
``dataset_config``, ``dataset_train_split``, ``dataset_test_split`` and ``model_revision`` are
tidpo's own run keys (`tidpo.training.settings.RunOptions`) and pass through. Every such key is
either **mapped** to the tidpo field of the same meaning (``loss_type`` "sigmoid" -> ``loss``
dpo, "sft" -> ``sft_weight``, ``precompute_ref_log_probs`` -> ``precompute_ref``, ...),
**ignored** because tidpo already behaves so or the value is the default, or **refused** (a
`RunError`, exit 2) when tidpo cannot do what it asks. `translate_trl` returns the tidpo values
and one note per TRL field; ``TrainingArguments`` fields pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidpo.training.config import ConfigError as RunError

__all__ = ["TRL_KEYS", "translate_trl"]

_LOSSES = {"sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo", "robust": "robust"}
"""TRL ``loss_type`` -> tidpo ``loss`` (sigmoid with label smoothing is cDPO)."""

# TRL-only keys whose only accepted value is the given one (tidpo always behaves so), with why.
_FIXED: dict[str, tuple[Any, str]] = {
    "disable_dropout": (True, "tidpo always disables dropout (attribution and log-probs must see "
                              "the same network)"),
    "truncation_mode": ("keep_start", "tidpo truncates keeping the start"),
    "padding_free": (False, "tidpo pads its batches (padding-free batches are not supported)"),
    "f_divergence_type": ("reverse_kl", "tidpo's objectives use the reverse KL of DPO"),
    "use_weighting": (False, "WPO weighting is not implemented"),
    "sync_ref_model": (False, "a synchronised reference (TR-DPO) is not implemented"),
    "activation_offloading": (False, "activation offloading is not implemented"),
    "ld_alpha": (None, "LD-DPO length desensitisation is not implemented"),
    "router_aux_loss_coef": (None, "the mixture-of-experts auxiliary loss is not implemented"),
}  # fmt: skip
# TRL-only keys tidpo does not need, with why.
_IGNORED: dict[str, str] = {
    "model_init_kwargs": "tidpo loads the model in float32 itself",
    "dataset_num_proc": "tidpo tokenizes in one process",
    "pad_to_multiple_of": "tidpo pads to the longest row of a batch",
    "pad_token": "tidpo pads with the tokenizer's pad token (or its end-of-sequence token)",
    "precompute_ref_batch_size": "tidpo precomputes with per_device_train_batch_size",
    "f_alpha_divergence_coef": "only used by the alpha divergence",
    "discopop_tau": "only used by the discopop loss",
    "ref_model_mixup_alpha": "only used with sync_ref_model",
    "ref_model_sync_steps": "only used with sync_ref_model",
    "remove_unused_columns": "tidpo's collator needs its columns; it is always false",
}
_MAPPED = {"model_name_or_path": "model", "dataset_name": "dataset",
           "precompute_ref_log_probs": "precompute_ref",
           "trust_remote_code": "trust_remote_code"}  # fmt: skip
TRL_KEYS = frozenset({*_FIXED, *_IGNORED, *_MAPPED, "loss_type", "loss_weights"})
"""Keys that mark a YAML file as a TRL config (and are translated)."""


def _losses(types: Any, weights: Any, smoothing: float) -> tuple[dict[str, Any], str]:
    """``loss_type`` (+ ``loss_weights``) as tidpo's ``loss`` and ``sft_weight``."""
    names = [types] if isinstance(types, str) else list(types or ["sigmoid"])
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise RunError(f"loss_weights: {len(weights)} weights for {len(names)} loss types")
    pairs = dict(zip(names, (float(w) for w in weights), strict=True))
    sft = pairs.pop("sft", 0.0)
    unknown = [n for n in pairs if n not in _LOSSES]
    if unknown or len(pairs) > 1:
        what = unknown[0] if unknown else "+".join(pairs)
        raise RunError(f"loss_type: {what!r} is not available in tidpo (one of "
                       f"{', '.join(_LOSSES)}, optionally with 'sft')")  # fmt: skip
    out: dict[str, Any] = {"sft_weight": sft} if sft else {}
    if pairs:
        ((name, weight),) = pairs.items()
        if weight != 1.0:
            raise RunError(f"loss_weights: the {name!r} term must weigh 1.0 in tidpo (scale "
                           f"learning_rate instead); got {weight}")  # fmt: skip
        out["loss"] = "cdpo" if name == "sigmoid" and smoothing > 0 else _LOSSES[name]
    else:  # "sft" alone: plain DPO term off is not supported
        raise RunError("loss_type: ['sft'] alone is supervised fine-tuning, not preference "
                       "training; add 'sigmoid'")  # fmt: skip
    return out, f"loss={out['loss']}" + (f", sft_weight={sft}" if sft else "")


def translate_trl(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """tidpo's values for a TRL config's, and one note per TRL-only field (module docstring).

    Raises `RunError` naming the first field tidpo cannot honour.
    """
    out = {k: v for k, v in values.items() if k not in TRL_KEYS}
    notes: list[str] = []
    for key, (accepted, why) in _FIXED.items():
        if key in values:
            if values[key] != accepted:
                raise RunError(f"{key}: {values[key]!r} is not supported ({why})")
            notes.append(f"TRL {key}={values[key]!r}: ignored ({why})")
    for key, why in _IGNORED.items():
        if key in values:
            notes.append(f"TRL {key}={values[key]!r}: ignored ({why})")
    for key, ours in _MAPPED.items():
        if key in values:
            out[ours] = values[key]
            notes.append(f"TRL {key} -> {ours}={values[key]!r}")
    if "loss_type" in values or "loss_weights" in values:
        smoothing = float(values.get("label_smoothing") or 0.0)
        mapped, text = _losses(values.get("loss_type"), values.get("loss_weights"), smoothing)
        out.update(mapped)
        notes.append(f"TRL loss_type={values.get('loss_type')!r} -> {text}")
    return out, notes
