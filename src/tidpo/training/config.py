"""TIDPOConfig: transformers.TrainingArguments plus the TI-DPO knobs (docs/method.md section 5)."""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from tidpo.errors import TidpoError
from tidpo.training.estimator_options import token_option_problems
from tidpo.training.precision import Precision, PrecisionError, choose_precision
from tidpo.training.sharding import deepspeed_autocast
from tidpo.training.speed_options import device_problems, speed_option_problems
from tidpo.training.values import range_problems, type_problem

LOSSES = ("tidpo", "dpo", "cdpo", "ipo", "hinge", "robust", "simpo", "tdpo")
WEIGHTINGS = ("hybrid", "attribution", "prior", "uniform", "random", "softmax_prior", "column")
SPECIAL_TOKENS = ("attribute", "prior", "mean")
ATTRIBUTION_TARGETS = ("max_logit", "response_logprob")
PRESETS = ("paper", "released", "special-prior", "confpo")
ANCHOR_REFRESH_MODES = ("lookahead", "sparse")

# The released code's values (its config/loss/tidpo.yaml and trainer: RMSprop, warm-up then a
# constant rate, gradient clipping 10, 64-token anchors), applied by preset="released" to every
# field the user did not set (a value set explicitly is kept, even one equal to a default).
RELEASED: dict[str, Any] = {
    "beta": 0.2,
    "importance_lambda": 0.2,
    "gamma": 0.001,
    "triplet_margin": 0.001,
    "tdpo_alpha": 0.5,
    "sigma_div": 8.0,
    "weight_span": "sequence",
    "weight_scale": "mean",
    "optim": "rmsprop",
    "learning_rate": 5e-6,
    "warmup_steps": 150,
    "lr_scheduler_type": "constant_with_warmup",
    "max_grad_norm": 10.0,
    "anchor_max_new_tokens": 64,
    "anchor_top_k": 50,
    "anchor_top_p": 0.95,
    "anchor_temperature": 0.8,
}
# The paper's method with the end-of-turn and other special tokens taken out of the attribution
# (their weight from the prior alone): in the medium study (docs/results.md) it beat the paper
# default on pass rate and win rate with paired intervals clear of 0 (three seeds). Opt-in.
SPECIAL_PRIOR: dict[str, Any] = {"special_tokens": "prior"}
# ConfPO's objective: SimPO's length-normalised, reference-free margin over the tokens whose
# probability is below their response's mean. The one arm of the weighting study (docs/results.md)
# that beat DPO by its rule: TruthfulQA MC2 clear above, no benchmark clear below; against plain
# SimPO at the same rate it showed no detectable difference (the gain is SimPO's). Opt-in.
CONFPO: dict[str, Any] = {"loss": "simpo", "confpo": True}
PRESET_VALUES: dict[str, dict[str, Any]] = {
    "paper": {},
    "released": RELEASED,
    "special-prior": SPECIAL_PRIOR,
    "confpo": CONFPO,
}


@dataclass(frozen=True)
class AnchorSampling:
    """How an anchor is sampled from the policy (the released code's settings, and the
    defaults of `TIDPOConfig`'s ``anchor_*`` fields)."""

    max_new_tokens: int = 64
    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 0.8

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        """``generate``'s sampling arguments."""
        return {"top_k": self.top_k, "top_p": self.top_p, "temperature": self.temperature}


class ConfigError(TidpoError, ValueError):
    """An invalid configuration value; the message names the field."""


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name}: must be one of {', '.join(options)}; got {value!r}")


def _check(name: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: must be {rule}; got {value!r}")


@dataclass
class TIDPOConfig(TrainingArguments):
    """Training arguments for `TIDPOTrainer`: every `TrainingArguments` option plus TI-DPO's.

    Defaults are the paper's (docs/method.md section 5); ``preset="released"`` switches the
    fields the caller did not set to the released code's values: a value passed explicitly wins
    over the preset, even one equal to the default (`with_defaults` gives a job's own defaults,
    which the preset overrides). Invalid values raise `ConfigError` at construction, naming the
    field.
    """

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature beta (Eq. 12)."})
    importance_lambda: float = field(default=0.7, metadata={"help": "Hybrid mix lambda (Eq. 8)."})
    sigma_div: float = field(default=4.0, metadata={"help": "Prior width: sigma = T / sigma_div."})
    weight_scale: str = field(default="mean", metadata={"help": "mean (avg 1) | sum (sum 1)."})
    weight_span: str = field(default="response", metadata={"help": "response | sequence."})
    weighting: str = field(default="hybrid", metadata={"help": "|".join(WEIGHTINGS)})
    special_tokens: str = field(
        default="attribute",
        metadata={"help": "Special tokens (end of turn): attribute (paper) | prior | mean."},
    )
    weight_cap: float | None = field(
        default=None, metadata={"help": "Cap any token's weight at this multiple of the mean."}
    )
    weight_blend: float | None = field(
        default=None, metadata={"help": "Blend the weights toward uniform: 1 + l * (w_hat - 1)."}
    )
    weight_rank: float | None = field(
        default=None, metadata={"help": "The weights' ranks mapped into [1 - d, 1 + d]."}
    )
    tie_shared_prefix: bool = field(
        default=False, metadata={"help": "One weight on the start chosen and rejected share."}
    )
    confpo: bool = field(
        default=False, metadata={"help": "ConfPO: only tokens below their response's mean prob."}
    )
    position_decay: float | None = field(
        default=None, metadata={"help": "D2PO: the k-th response token weighs gamma^k."}
    )
    reverse_pairs: bool = field(
        default=False, metadata={"help": "Swap chosen and rejected (reverse DPO, for TIS-DPO)."}
    )
    attribution_target: str = field(
        default="max_logit",
        metadata={"help": "max_logit (Eq. 5, paper) | response_logprob."},
    )
    sft_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an NLL term on the chosen responses (TRL's 'sft' loss)."},
    )
    triplet_distance: str = field(
        default="sum", metadata={"help": "sum (Eq. 13, paper) | mean (per aligned token)."}
    )
    gamma: float = field(default=0.1, metadata={"help": "Triplet loss weight (Eq. 14)."})
    triplet_margin: float = field(default=0.1, metadata={"help": "Triplet margin (Eq. 13)."})
    tdpo_alpha: float = field(default=0.0, metadata={"help": "Weighted TDPO2 KL term alpha."})
    loss: str = field(default="tidpo", metadata={"help": "|".join(LOSSES)})
    label_smoothing: float = field(default=0.1, metadata={"help": "eps of cdpo and robust."})
    simpo_beta: float = field(default=2.0, metadata={"help": "SimPO beta."})
    simpo_gamma: float = field(default=1.0, metadata={"help": "SimPO target reward margin."})
    anchor_source: str = field(default="policy", metadata={"help": "policy | column | none."})
    anchor_from: str = field(default="prompt", metadata={"help": "prompt | chosen_prefix."})
    anchor_max_new_tokens: int = field(default=AnchorSampling.max_new_tokens)
    anchor_top_k: int = field(default=AnchorSampling.top_k)
    anchor_top_p: float = field(default=AnchorSampling.top_p)
    anchor_temperature: float = field(default=AnchorSampling.temperature)
    anchor_refresh_steps: int = field(
        default=1,
        metadata={"help": "k: policy anchors are sampled once per window of k optimiser steps."},
    )
    anchor_refresh_mode: str = field(
        default="lookahead",
        metadata={"help": "lookahead (one generate call samples the anchors of the window's k "
                  "steps; at most k-1 steps old) | sparse (the triplet on a window's first "
                  "step only, weight k*gamma)."},
    )  # fmt: skip
    anchor_engine: str = field(
        default="auto",
        metadata={"help": "auto (compiled on a GPU, plain elsewhere) | plain (dynamic KV cache) "
                  "| static (static KV cache) | compiled (static cache, compiled decoding)."},
    )  # fmt: skip
    lm_head_chunk_mb: int | None = field(
        default=None,
        metadata={"help": "Budget (MiB) of one fp32 [rows, vocab] chunk of the fused head (one "
                  "chunk when all rows fit). None: 1024 on a GPU, about 128 on a CPU."},
    )  # fmt: skip
    fused_head: str = field(
        default="tidpo",
        metadata={"help": "tidpo | liger (Liger-Kernel's fused linear cross-entropy, CUDA)."},
    )
    max_length: int = field(default=512, metadata={"help": "Prompt + response tokens."})
    ref_model: str | None = field(
        default=None, metadata={"help": "Reference model path; None = frozen copy of the policy."}
    )
    precompute_ref: bool = field(
        default=False, metadata={"help": "Cache reference log-probs on disk before training."}
    )
    preset: str = field(
        default="paper", metadata={"help": "paper | released | special-prior | confpo."}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 where the hardware runs it natively) | fp32 | bf16 | fp16."},
    )
    remove_unused_columns: bool = field(default=False)
    report_to: Any = field(default="none")

    def __post_init__(self) -> None:
        self._check_types()
        _choice("preset", self.preset, PRESETS)
        explicit: frozenset[str] = getattr(self, "_explicit_fields", frozenset())
        for key, value in PRESET_VALUES[self.preset].items():
            if key not in explicit:
                setattr(self, key, value)
        self.validate_tidpo()
        problems = range_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ConfigError(problems[0])
        self._resolve_precision(explicit)
        problems = device_problems(self, self.precision_choice.device)
        if problems:
            raise ConfigError(problems[0])
        super().__post_init__()
        deepspeed_autocast(self)  # bf16 under DeepSpeed as one process computes it

    @classmethod
    def with_defaults(cls, defaults: Mapping[str, Any], **values: Any) -> TIDPOConfig:
        """``TIDPOConfig(**values)`` with a job's own ``defaults`` (e.g. the CLI's 10-minute
        budget) for the fields ``values`` leaves out. Only ``values`` count as set explicitly:
        the preset's values win over ``defaults``, ``values`` win over both."""
        config = cls.__new__(cls)
        config._explicit_fields = frozenset(values)  # type: ignore[attr-defined]
        cls.__init__(config, **{**defaults, **values})
        return config

    def _check_types(self) -> None:
        """Every field with a plain annotation (number, integer, flag, text) holds such a value,
        and every number is finite (`tidpo.training.values.type_problem`)."""
        hints = _hints()
        for f in fields(self):
            problem = type_problem(f.name, hints.get(f.name, Any), getattr(self, f.name))
            if problem:
                raise ConfigError(problem)

    def _resolve_precision(self, explicit: frozenset[str]) -> None:
        """Set ``bf16``/``fp16`` from ``precision`` (`tidpo.training.precision.choose_precision`).

        ``bf16=True`` or ``fp16=True`` passed explicitly (TrainingArguments' own switches) stand
        for that precision; combined with a different explicit ``precision`` they are an error.
        """
        flags = {"bf16", "fp16"} & explicit
        from_flags = "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"
        requested = self.precision
        if flags and "precision" in explicit and requested not in ("auto", from_flags):
            raise ConfigError(f"precision: {requested!r} contradicts {', '.join(sorted(flags))}")
        if flags and requested == "auto":
            requested = from_flags
        try:
            choice = choose_precision(requested, use_cpu=bool(self.use_cpu))
        except PrecisionError as err:
            raise ConfigError(str(err)) from None
        if choice.name == "fp16" and self.needs_attribution:
            field = "precision" if "precision" in explicit or not flags else "fp16"
            raise ConfigError(f"{field}: fp16 would underflow the attribution gradients of "
                              f"weighting {self.weighting!r} (its backward is not loss-scaled); "
                              "use bf16 or fp32, or a weighting without attribution")  # fmt: skip
        self.bf16, self.fp16 = choice.name == "bf16", choice.name == "fp16"
        if choice.name == "bf16" and choice.device == "cpu":
            self.use_cpu = True  # TrainingArguments runs bf16 on a CPU only when told so
        self.precision_choice: Precision = choice

    def validate_tidpo(self) -> None:
        """Raise `ConfigError` naming the first invalid TI-DPO field."""
        _choice("loss", self.loss, LOSSES)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("special_tokens", self.special_tokens, SPECIAL_TOKENS)
        _choice("attribution_target", self.attribution_target, ATTRIBUTION_TARGETS)
        _choice("triplet_distance", self.triplet_distance, ("sum", "mean"))
        if self.weight_cap is not None:
            _check("weight_cap", self.weight_cap >= 1, ">= 1 (a multiple of the mean weight)",
                   self.weight_cap)  # fmt: skip
        _choice("weight_scale", self.weight_scale, ("mean", "sum"))
        _choice("weight_span", self.weight_span, ("response", "sequence"))
        _choice("anchor_source", self.anchor_source, ("policy", "column", "none"))
        _choice("anchor_from", self.anchor_from, ("prompt", "chosen_prefix"))
        _check("beta", self.beta > 0, "> 0", self.beta)
        _check("importance_lambda", 0 <= self.importance_lambda <= 1, "in [0, 1]",
               self.importance_lambda)  # fmt: skip
        _check("sigma_div", self.sigma_div > 0, "> 0", self.sigma_div)
        _check("gamma", self.gamma >= 0, ">= 0", self.gamma)
        _check("sft_weight", self.sft_weight >= 0, ">= 0", self.sft_weight)
        _check("triplet_margin", self.triplet_margin >= 0, ">= 0", self.triplet_margin)
        _check("tdpo_alpha", self.tdpo_alpha >= 0, ">= 0", self.tdpo_alpha)
        _check("label_smoothing", 0 <= self.label_smoothing < 0.5, "in [0, 0.5)",
               self.label_smoothing)  # fmt: skip
        _check("simpo_beta", self.simpo_beta > 0, "> 0", self.simpo_beta)
        _check("anchor_max_new_tokens", self.anchor_max_new_tokens >= 1, ">= 1",
               self.anchor_max_new_tokens)  # fmt: skip
        _check("anchor_top_k", self.anchor_top_k >= 0, ">= 0", self.anchor_top_k)
        _check("anchor_top_p", 0 < self.anchor_top_p <= 1, "in (0, 1]", self.anchor_top_p)
        _check("anchor_temperature", self.anchor_temperature > 0, "> 0", self.anchor_temperature)
        _check("anchor_refresh_steps", self.anchor_refresh_steps >= 1, ">= 1",
               self.anchor_refresh_steps)  # fmt: skip
        _choice("anchor_refresh_mode", self.anchor_refresh_mode, ANCHOR_REFRESH_MODES)
        _check("max_length", self.max_length >= 2, ">= 2", self.max_length)
        _check("remove_unused_columns", not self.remove_unused_columns,
               "false (tidpo's collator needs its data columns)",
               self.remove_unused_columns)  # fmt: skip
        if self.weighting == "column" and self.loss == "tdpo":
            raise ConfigError(
                "weighting: 'column' weighs the log-ratio margin; loss 'tdpo' has "
                "none to weigh (use tidpo, dpo, cdpo, robust, hinge, ipo or simpo)"
            )
        problems = token_option_problems(self) + speed_option_problems(self)
        if problems:
            raise ConfigError(problems[0])
        if self.weighting == "column" and self.special_tokens == "prior":
            raise ConfigError(
                "special_tokens: 'prior' changes how attribution is mixed; "
                "weighting 'column' uses the data's weights ('attribute' or 'mean')"
            )
        if self.precompute_ref and self.needs_full_logits:
            why = "loss 'tdpo'" if self.loss == "tdpo" else f"tdpo_alpha={self.tdpo_alpha}"
            raise ConfigError(
                f"precompute_ref: {why} needs the reference's full logits at every step (the "
                "sequential KL), which the cache does not hold; set precompute_ref=false or "
                "tdpo_alpha=0"
            )

    @property
    def uses_triplet(self) -> bool:
        """Whether the triplet term (Eq. 13-14) is part of the objective."""
        return self.loss == "tidpo" and self.gamma > 0 and self.anchor_source != "none"

    @property
    def anchor_sampling(self) -> AnchorSampling:
        """The anchor sampling of this run (used by training, explain and the run report)."""
        return AnchorSampling(self.anchor_max_new_tokens, self.anchor_top_k, self.anchor_top_p,
                              self.anchor_temperature)  # fmt: skip

    @property
    def needs_full_logits(self) -> bool:
        """Whether the step needs ``[N, L, V]`` logits of policy and reference (the sequential
        KL of TDPO and of the weighted TDPO2 term); otherwise log-probs come from the fused head."""
        return self.loss == "tdpo" or (self.loss == "tidpo" and self.tdpo_alpha > 0)

    @property
    def uses_reference(self) -> bool:
        """Whether the objective needs reference log-probabilities (SimPO does not)."""
        return self.loss != "simpo"

    @property
    def needs_attribution(self) -> bool:
        """Whether the step computes gradient attribution (Eq. 5-6)."""
        return self.loss == "tidpo" and self.weighting in ("hybrid", "attribution", "softmax_prior")

    def tidpo_dict(self) -> dict[str, Any]:
        """The TI-DPO fields only (for config.yaml and reports)."""
        own = {f.name for f in fields(TIDPOConfig)} - {f.name for f in fields(TrainingArguments)}
        return {name: getattr(self, name) for name in sorted(own)}


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TIDPOConfig)


def _record_explicit_fields(cls: type[TIDPOConfig]) -> None:
    """Wrap the dataclass ``__init__`` so each instance knows which fields its caller passed
    (unless `TIDPOConfig.with_defaults` said so first): the one mechanism of presets.

    A preset fills only the fields not passed: a value the user sets explicitly is never
    overwritten, even when it equals the default.
    """
    init = cls.__init__
    names = [f.name for f in fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self: TIDPOConfig, *args: Any, **kwargs: Any) -> None:
        if "_explicit_fields" not in self.__dict__:
            self._explicit_fields = frozenset(names[: len(args)]) | frozenset(kwargs)  # type: ignore[attr-defined]
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]


_record_explicit_fields(TIDPOConfig)
