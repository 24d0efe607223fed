"""Checks of configuration values: types from the field annotations, finiteness, ranges.

`type_problem` says why a value does not fit a field's annotation (a number field takes a number,
a flag true or false, a text field text); `range_problems` lists the ``TrainingArguments``
fields whose value the Trainer would accept silently or fail on deep inside training (a batch
size of 0, a negative learning rate, ``inf``). `TIDPOConfig` runs both at construction, so a bad
value stops a run before any work, with one line naming the field.
"""

from __future__ import annotations

import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["RANGES", "accepts", "as_number", "kind_of", "range_problems", "type_problem"]

_KINDS: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number",
                          str: "text", type(None): "null"}  # fmt: skip


def accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits the type ``hint``; None when tidpo cannot tell (enums, lists...)."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        answers = [accepts(arg, value) for arg in typing.get_args(hint)]
        return True if True in answers else (None if None in answers else False)
    if hint is bool or hint is str or hint is type(None):
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return None


def as_number(hint: Any, value: Any) -> Any:
    """``value`` read as a number when it is text such as ``2e-5`` and the field takes a number
    (YAML 1.1, as PyYAML reads it, takes ``2e-5`` without a dot for text)."""
    if not isinstance(value, str) or accepts(hint, 1.5) is not True or accepts(hint, value):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def kind_of(hint: Any) -> str:
    """``a number or null``: the kinds of value a field annotated ``hint`` takes."""
    args = typing.get_args(hint) or (hint,)
    return " or ".join(_KINDS[a] for a in args if a in _KINDS)


def _enum_of(hint: Any) -> type[enum.Enum] | None:
    """The Enum of an annotation such as ``OptimizerNames | str`` (TrainingArguments' choices)."""
    for arg in typing.get_args(hint) or (hint,):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return arg
    return None


def type_problem(name: str, hint: Any, value: Any) -> str | None:
    """``"name: must be a number; got 'x'"`` when ``value`` does not fit ``hint``, else None;
    a float that is not finite, or a text not among an Enum field's choices, is a problem too."""
    choices = _enum_of(hint)
    if choices is not None and not isinstance(value, choices):
        allowed = [str(e.value) for e in choices]
        if value not in allowed:
            listed = ", ".join(allowed[:12]) + (", ..." if len(allowed) > 12 else "")
            return f"{name}: must be one of {listed}; got {value!r}"
    if accepts(hint, value) is False:
        return f"{name}: must be {kind_of(hint)}; got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: must be a finite number; got {value!r}"
    return None


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _positive(v: Any) -> bool:
    return bool(v > 0)


RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "learning_rate": (">= 0", _at_least(0)),
    "weight_decay": (">= 0", _at_least(0)),
    "adam_beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_epsilon": ("> 0", _positive),
    "max_grad_norm": (">= 0", _at_least(0)),
    "num_train_epochs": ("> 0", _positive),
    "max_steps": ("-1 (train num_train_epochs) or >= 1", lambda v: v == -1 or v >= 1),
    "warmup_steps": (">= 0", _at_least(0)),
    "per_device_train_batch_size": (">= 1", _at_least(1)),
    "per_device_eval_batch_size": (">= 1", _at_least(1)),
    "gradient_accumulation_steps": (">= 1", _at_least(1)),
    "logging_steps": ("> 0", _positive),
    "save_steps": ("> 0", _positive),
    "eval_steps": ("> 0 or null", lambda v: v is None or v > 0),
    "save_total_limit": (">= 0 or null", lambda v: v is None or v >= 0),
    "seed": (">= 0", _at_least(0)),
    "dataloader_num_workers": (">= 0", _at_least(0)),
}
"""``TrainingArguments`` fields and the values tidpo accepts for them (rule, test)."""


def range_problems(values: dict[str, Any]) -> list[str]:
    """``"field: must be RULE; got VALUE"`` for each field of `RANGES` out of its range."""
    out = []
    for name, (rule, ok) in RANGES.items():
        value = values.get(name)
        if name in values and isinstance(value, (int, float)) and not ok(value):
            out.append(f"{name}: must be {rule}; got {value!r}")
    return out
