"""TIDPOTrainer: `transformers.Trainer` whose `compute_loss` runs one TI-DPO step.

One step, as data (ARCHITECTURE.md): chosen, rejected (and anchor) rows go through the policy in
one forward via ``inputs_embeds``; the attribution of Eq. 5-6 reuses that graph (a gradient to
the embeddings only); weights, reference log-probs and the objective follow, each computed once.
Everything else (optimiser, accumulation, mixed precision, checkpoints, resume, logging,
distribution) is the Trainer's.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer_callback import TrainerControl, TrainerState
from transformers.training_args import TrainingArguments

from tidpo import functional as F
from tidpo.anchors import AnchorSampler
from tidpo.collate import PreferenceCollator
from tidpo.config import TIDPOConfig
from tidpo.data import DataError, tokenize_dataset
from tidpo.errors import TidpoError
from tidpo.objective import StepTensors, step_loss
from tidpo.reference import ReferenceCache, forward_logps, frozen_copy

__all__ = ["MetricsFileCallback", "TIDPOTrainer", "prepare_dataset"]


def prepare_dataset(ds: Dataset, tokenizer: PreTrainedTokenizerBase, cfg: TIDPOConfig) -> Dataset:
    """Tokenize (unless already tokenized) and number the rows (``idx``) for the caches."""
    if "chosen_ids" not in ds.column_names:
        ds, _ = tokenize_dataset(ds, tokenizer, cfg.max_length)
    if "idx" in ds.column_names:
        ds = ds.remove_columns("idx")
    ds = ds.add_column("idx", list(range(len(ds))))
    needs_column = cfg.uses_triplet and cfg.anchor_source == "column"
    if needs_column and (
        "anchor_ids" not in ds.column_names or any(a is None for a in ds["anchor_ids"])
    ):
        raise DataError("anchor_source 'column' needs an 'anchor' value in every row")
    return ds


def _disable_dropout(model: nn.Module) -> None:
    """Dropout off in the policy (as TRL does): attribution and log-probs see the same network."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _cat_rows(parts: list[tuple[Tensor, Tensor, Tensor]], pad: int) -> tuple[Tensor, ...]:
    """Stack right-padded row groups ``(ids, attention, response)`` padded to a common width."""
    width = max(p[0].shape[1] for p in parts)
    out = []
    for k, fill in enumerate((pad, 0, 0)):
        out.append(
            torch.cat(
                [nn.functional.pad(p[k], (0, width - p[k].shape[1]), value=fill) for p in parts]
            )
        )
    return tuple(out)


class MetricsFileCallback(TrainerCallback):
    """Appends every log record as one JSON line to ``<output_dir>/metrics.jsonl``."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        path = Path(str(args.output_dir)) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class NonFiniteLossError(TidpoError):
    """Too many consecutive non-finite losses: the run stops (its last checkpoint is intact)."""


class _NonFiniteGuard(TrainerCallback):
    """Skips the optimiser step after a non-finite loss and stops after ``limit`` in a row.

    Skipping works by dropping every gradient (``grad = None``): torch optimisers leave such
    parameters untouched, so the weights and the optimiser state stay as they were.
    """

    def __init__(self, trainer: TIDPOTrainer, limit: int = 10) -> None:
        self.trainer = trainer
        self.limit = limit
        self.bad_in_step = False
        self.in_a_row = 0
        self.skipped = 0

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not self.bad_in_step:
            self.in_a_row = 0
            return
        self.bad_in_step = False
        self.in_a_row += 1
        self.skipped += 1
        model: Any = self.trainer.model
        model.zero_grad(set_to_none=True)
        if self.in_a_row >= self.limit:
            ckpts = sorted(Path(str(args.output_dir)).glob("checkpoint-*"))
            last = f"last checkpoint {ckpts[-1]}" if ckpts else "no checkpoint was saved yet"
            raise NonFiniteLossError(
                f"{self.in_a_row} non-finite losses in a row at step {state.global_step + 1}; "
                f"stopping ({last}). Lower the learning rate or check the data."
            )


class TIDPOTrainer(Trainer):
    """Trainer for TI-DPO and the baseline preference objectives (``TIDPOConfig.loss``).

    Args:
        model: the policy (a transformers causal LM, or a PEFT model for LoRA).
        args: a `TIDPOConfig`.
        train_dataset / eval_dataset: preference rows (`tidpo.data.load_preferences`), raw or
            already tokenized.
        processing_class: the tokenizer.
        ref_model: the reference; None means a frozen copy of the policy (or, for a PEFT model,
            the policy with its adapter disabled, so no second model is held).
    """

    args: TIDPOConfig

    def __init__(
        self,
        model: nn.Module,
        args: TIDPOConfig,
        train_dataset: Dataset,
        processing_class: PreTrainedTokenizerBase,
        eval_dataset: Dataset | None = None,
        ref_model: nn.Module | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        pad = processing_class.pad_token_id
        if pad is None:
            pad = processing_class.eos_token_id
        self.pad_token_id = int(pad)
        _disable_dropout(model)
        train_dataset = prepare_dataset(train_dataset, processing_class, args)
        if eval_dataset is not None:
            eval_dataset = prepare_dataset(eval_dataset, processing_class, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=PreferenceCollator(self.pad_token_id),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=[MetricsFileCallback(), *(callbacks or [])],
        )
        self.loss_is_scaled_for_ga = False  # compute_loss returns a batch mean
        self.guard = _NonFiniteGuard(self)
        self.add_callback(self.guard)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        self.ref_model: nn.Module | None = None
        self.ref_cache: ReferenceCache | None = None
        if args.uses_reference:
            self._setup_reference(ref_model, train_dataset)
        self.anchor_sampler: AnchorSampler | None = None
        if args.uses_triplet and args.anchor_source == "policy":
            eos = processing_class.eos_token_id
            self.anchor_sampler = AnchorSampler(
                pad_token_id=self.pad_token_id,
                eos_token_ids=[int(eos)] if eos is not None else [],
                max_new_tokens=args.anchor_max_new_tokens,
                top_k=args.anchor_top_k,
                top_p=args.anchor_top_p,
                temperature=args.anchor_temperature,
                refresh_steps=args.anchor_refresh_steps,
                from_=args.anchor_from,
            )

    # ----------------------------------------------------------------------------- reference
    def _setup_reference(self, ref_model: nn.Module | None, train_dataset: Dataset) -> None:
        args = self.args
        policy: nn.Module = self.model  # type: ignore[assignment]
        if ref_model is None and not self.is_peft:
            ref_model = frozen_copy(policy)
        if ref_model is not None:
            ref_model.eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
            ref_model = ref_model.to(args.device)
        if args.precompute_ref:
            self.ref_cache = self._build_cache(ref_model, train_dataset)
            # Live anchors still need pi_ref for their own tokens (only those rows run).
            if not args.uses_triplet:
                ref_model = None
        self.ref_model = ref_model

    def _build_cache(self, ref_model: nn.Module | None, ds: Dataset) -> ReferenceCache:
        from tidpo.models import cache_dir
        from tidpo.reference import data_fingerprint, model_fingerprint

        source: nn.Module = ref_model if ref_model is not None else self.model  # type: ignore[assignment]
        key = f"{model_fingerprint(source)}-{data_fingerprint(ds, str(self.args.max_length))}"
        path = cache_dir() / "ref-logps" / f"{key}.safetensors"
        if path.exists():
            return ReferenceCache.load(path)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=max(1, self.args.per_device_train_batch_size),
            collate_fn=self.data_collator, shuffle=False,
        )  # fmt: skip
        with self.autocast_context():
            cache = ReferenceCache.build(
                source.to(self.args.device), iter(loader), len(ds),
                disable_adapter=ref_model is None,
            )  # fmt: skip
        cache.save(path)
        return cache

    def autocast_context(self) -> Any:
        """The Trainer's mixed-precision context (bf16 autocast when ``bf16=True``)."""
        return self.compute_loss_context_manager()

    def _reference_logps(
        self, model: nn.Module, ids: Tensor, am: Tensor, span: Tensor, idx: Tensor | None, b: int
    ) -> tuple[Tensor, Tensor | None]:
        """Per-token reference log-probs ``[N, L-1]`` and, when a TDPO term needs it, logits."""
        need_logits = self.args.loss == "tdpo" or self.args.tdpo_alpha > 0
        live = (
            self.ref_model if self.ref_model is not None else self.accelerator.unwrap_model(model)
        )
        adapter_off = self.ref_model is None
        if self.ref_cache is None:
            return forward_logps(live, ids, am, span, adapter_off, return_logits=need_logits)
        assert idx is not None, "the reference cache needs the batch's idx"
        ref = torch.zeros(span.shape, dtype=torch.float32, device=span.device)
        ref[: 2 * b] = self.ref_cache.lookup(idx, span[: 2 * b])
        if ids.shape[0] > 2 * b:  # anchors are new text: score them live
            lp, _ = forward_logps(live, ids[2 * b :], am[2 * b :], span[2 * b :], adapter_off)
            ref[2 * b :] = lp
        return ref, None

    # ---------------------------------------------------------------------------------- step
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        cfg = self.args
        mode = "train" if model.training else "eval"
        ids, am, rm = inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
        b = ids.shape[0] // 2
        if cfg.uses_triplet:
            if self.anchor_sampler is not None:
                anchors = self.anchor_sampler.rows(
                    self.accelerator.unwrap_model(model), inputs, self.state.global_step
                )
            else:
                anchors = (inputs["anchor_input_ids"], inputs["anchor_attention_mask"],
                           inputs["anchor_response_mask"])  # fmt: skip
            ids, am, rm = _cat_rows([(ids, am, rm), anchors], self.pad_token_id)
        embed: Any = self.accelerator.unwrap_model(model).get_input_embeddings()
        embeds = embed(ids)
        if cfg.needs_attribution and not embeds.requires_grad:
            embeds.requires_grad_(True)  # LoRA: frozen embeddings, still differentiable inputs
        out = model(
            inputs_embeds=embeds,
            attention_mask=am,
            position_ids=F.position_ids_from_mask(am),
            use_cache=False,
        )
        logits = out.logits
        scores = None
        if cfg.needs_attribution:
            target = F.last_token_max_logit(logits[: 2 * b], am[: 2 * b])
            scores = F.attribution_from_graph(target, embeds, am)[:, 1:]
        response = rm[:, 1:]
        span = response if cfg.weight_span == "response" else am[:, 1:]
        policy_lp = F.per_token_logps(logits[:, :-1], ids[:, 1:], span)
        ref_lp, seq_kl = None, None
        if cfg.uses_reference:
            ref_lp, ref_logits = self._reference_logps(model, ids, am, span, inputs.get("idx"), b)
            if ref_logits is not None:
                seq_kl = F.sequential_kl(logits[: 2 * b, :-1], ref_logits[: 2 * b], span[: 2 * b])
        gen = None
        if cfg.loss == "tidpo" and cfg.weighting == "random":
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + self.state.global_step)
        tensors = StepTensors(policy_lp, ref_lp, span, response, scores, seq_kl)
        loss, metrics = step_loss(cfg, tensors, b, gen)
        if mode == "train" and not torch.isfinite(loss):
            # No update from this batch: a zero loss that still reaches every trainable
            # parameter (so DDP's reducer is satisfied), then the guard drops the gradients.
            self.guard.bad_in_step = True
            metrics = {}
            loss = sum((p.reshape(-1)[0] for p in model.parameters() if p.requires_grad),
                       torch.zeros((), device=logits.device)) * 0.0  # fmt: skip
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Evaluation loss; attribution needs a graph, so gradients are on (nothing is stepped)."""
        inputs = self._prepare_inputs(inputs)
        grad = torch.enable_grad() if self.args.needs_attribution else contextlib.nullcontext()
        with grad, self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        model.zero_grad(set_to_none=True)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the step metrics (averaged since the last log) to the Trainer's record."""
        mode = "train" if self.model is not None and self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[f"{prefix}{key}"] = sum(values) / len(values)
        self._metrics[mode].clear()
        if mode == "train":
            logs["train/skipped_steps"] = float(self.guard.skipped)
        super().log(logs, start_time)
