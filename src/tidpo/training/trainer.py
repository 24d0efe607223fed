"""TIDPOTrainer: `transformers.Trainer` whose `compute_loss` runs one TI-DPO step.

One step, as data (docs/architecture.md): chosen, rejected (and anchor) rows go through the
policy in one forward via ``inputs_embeds``; the attribution of Eq. 5-6 reuses that graph (a
gradient to the embeddings only); weights, reference log-probs and the objective follow, each
computed once.
Everything else (optimiser, accumulation, mixed precision, checkpoints, resume, logging,
distribution) is the Trainer's.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase, TrainerCallback

from tidpo import functional as F
from tidpo.data import eos_token_ids
from tidpo.training import trl_signature as sig
from tidpo.training.anchors import AnchorSampler
from tidpo.training.callbacks import (
    MetricsFileCallback,
    NonFiniteGuard,
    NonFiniteLossError,
    rank_means,
)
from tidpo.training.config import TIDPOConfig
from tidpo.training.forward import (
    Forward,
    attribution_graph,
    attribution_scores,
    head_agrees,
    output_head,
    reference_logps,
    run_forward,
    stack_rows,
    token_logps,
)
from tidpo.training.objective import RandomDraws, StepTensors, step_loss, weight_span_mask
from tidpo.training.prepare import prepare_dataset
from tidpo.training.reference import ReferenceCache, live_reference, shared_cache
from tidpo.training.sharding import (
    StepModel,
    fsdp_autocast,
    gathered,
    register_zero3_head,
    save_step_model,
    sync_from_main,
    unwrap_step_model,
)
from tidpo.training.speed import SpeedTrainer

__all__ = ["MetricsFileCallback", "NonFiniteLossError", "TIDPOTrainer", "prepare_dataset"]


class TIDPOTrainer(SpeedTrainer):
    """Trainer for TI-DPO and the baseline objectives (``TIDPOConfig.loss``), with TRL 1.16
    `DPOTrainer`'s arguments and meanings (`tidpo.training.trl_signature`; docs/from-trl.md)."""

    args: TIDPOConfig

    def __init__(
        self,
        model: str | nn.Module,
        ref_model: str | nn.Module | None = None,
        args: sig.Args = None,
        data_collator: sig.Collator | None = None,
        train_dataset: sig.TrainData | None = None,
        eval_dataset: sig.EvalData | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics: sig.Metrics | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: sig.Optimizers = (None, None),
        optimizer_cls_and_kwargs: sig.OptimizerClsAndKwargs | None = None,
        preprocess_logits_for_metrics: sig.Preprocess | None = None,
        peft_config: sig.PeftConfig | None = None,
    ) -> None:
        got = sig.resolve(model, ref_model, args, train_dataset, eval_dataset, processing_class,
                      peft_config, data_collator, compute_metrics)  # fmt: skip
        model, ref_model, args, processing_class = (got.model, got.ref_model, got.args,
                                                    got.processing_class)  # fmt: skip
        train_dataset, eval_dataset = got.train_dataset, got.eval_dataset
        self.pad_token_id, self.special_ids = got.pad_token_id, got.special_ids
        super().__init__(
            model=model, args=args, data_collator=got.data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class,
            compute_metrics=compute_metrics, callbacks=[MetricsFileCallback(), *(callbacks or [])],
            optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )  # fmt: skip
        self.loss_is_scaled_for_ga = False  # compute_loss returns a batch mean
        self.guard = NonFiniteGuard(self)
        self.random_draws = RandomDraws(args.seed)
        self.add_callback(self.guard)
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.is_peft = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
        self._fused: bool | None = None  # log-probs from hidden states (None: not checked yet)
        self._fused_checked = False
        self.ref_model: nn.Module | None = None
        self.ref_caches: dict[int, ReferenceCache] = {}  # by dataset_id
        if args.uses_reference:
            evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
            datasets = [train_dataset, *(d for d in evals.values() if d is not None)]
            self._setup_reference(ref_model, datasets)
        self.anchor_sampler: AnchorSampler | None = None
        if args.uses_triplet and args.anchor_source == "policy":
            self.anchor_sampler = AnchorSampler(
                pad_token_id=self.pad_token_id,
                eos_token_ids=eos_token_ids(processing_class, model),
                sampling=args.anchor_sampling,
                refresh_steps=args.anchor_refresh_steps,
                mode=args.anchor_refresh_mode,
                from_=args.anchor_from,
                engine=args.anchor_engine,
            )
        # FSDP2 / ZeRO-3 shard the weights: they wrap a `StepModel`, whose forward does every
        # weight access of a step (docs/scale-out.md); DDP and one process wrap the model itself.
        self.sharded = bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)
        if self.sharded:
            sync_from_main(model, self.args.device)  # as DDP does; fully_shard does not
            self.model = self.model_wrapped = StepModel(model)
            if self.is_deepspeed_enabled:  # the fused head reads its weight outside lm_head
                register_zero3_head(self.model)
            if self.anchor_sampler is not None:  # every process joins each synced generate
                self.anchor_sampler.any_stale = self._any_process

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator; under FSDP2 with bf16 as one process computes it
        (`tidpo.training.sharding.fsdp_autocast`)."""
        super().create_accelerator_and_postprocess()
        fsdp_autocast(self.accelerator)

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (a collective: every process calls it)."""
        total = self.accelerator.reduce(torch.tensor([float(flag)], device=self.args.device),
                                        reduction="sum")  # fmt: skip
        return bool(total.item() > 0)

    # ----------------------------------------------------------------------------- reference
    @property
    def ref_cache(self) -> ReferenceCache | None:
        """The precomputed reference log-probs of the training set (None when not precomputed)."""
        return self.ref_caches.get(0)

    def _setup_reference(self, ref_model: nn.Module | None, datasets: list[Dataset]) -> None:
        """The live reference model and, with ``precompute_ref``, one cache per dataset."""
        args = self.args
        dtype = args.precision_choice.dtype  # the reference runs in autocast: linears cast once
        policy: nn.Module = self.model  # type: ignore[assignment]
        ref_model = live_reference(policy, ref_model, args.ref_model, self.is_peft, dtype,
                                   args.device)  # fmt: skip
        if args.precompute_ref:
            for ds in datasets:
                self.ref_caches[int(ds[0]["dataset_id"])] = self._build_cache(ref_model, ds)
            # Live anchors still need pi_ref for their own tokens (only those rows run).
            if not args.uses_triplet:
                ref_model = None
        self.ref_model = ref_model

    def _build_cache(self, ref_model: nn.Module | None, ds: Dataset) -> ReferenceCache:
        """The cache of ``ds`` (`tidpo.training.reference.shared_cache`): read when present,
        else scored by every process for its share of the batches and written by the main one."""
        source: nn.Module = ref_model if ref_model is not None else self.model  # type: ignore[assignment]
        loader = torch.utils.data.DataLoader(
            ds, batch_size=max(1, self.args.per_device_train_batch_size),
            collate_fn=self.data_collator, shuffle=False,
        )  # fmt: skip
        extra = f"{self.args.max_length}:{self.args.precision_choice.name}"  # bf16 logps differ
        # ZeRO-3 + LoRA: the policy is still partitioned here (the engine wraps it later), so its
        # full weights are gathered while it is fingerprinted and scored (a frozen copy is whole)
        with self.autocast_context(), gathered(source):
            return shared_cache(self.accelerator, source.to(self.args.device), ds, loader, extra,
                                disable_adapter=ref_model is None)  # fmt: skip

    def autocast_context(self) -> Any:
        """The mixed-precision context the policy's forward runs in (bf16 autocast when
        ``bf16=True``): accelerate applies it inside the prepared model's forward only, so the
        reference forward, the reference cache and the output head use it explicitly. Under
        DeepSpeed (whose engine applies its own, `tidpo.training.sharding.deepspeed_autocast`)
        accelerate's is a no-op: the run's precision gives it."""
        if self.is_deepspeed_enabled:
            return self.args.precision_choice.autocast()
        return self.accelerator.autocast()

    @staticmethod
    def _row_key(inputs: dict[str, Tensor]) -> tuple[int, Tensor] | None:
        """``(dataset_id, idx)`` of the batch's rows (one dataset per batch), or None."""
        if "idx" not in inputs or "dataset_id" not in inputs:
            return None
        ids = inputs["dataset_id"]
        if ids.numel() == 0 or bool((ids != ids[0]).any()):
            return None
        return int(ids[0]), inputs["idx"]

    def _reference_logps(self, model: nn.Module, ids: Tensor, am: Tensor, span: Tensor,
                         key: tuple[int, Tensor] | None = None, need_logits: bool = False,
                         ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """Per-token reference log-probs ``[N, L-1]`` (and logits when ``need_logits``).

        Rows of a dataset with a precomputed cache (``key`` = its id and the rows' indices) come
        from that cache; other rows (anchors: new text) run through the live reference.
        """
        cache = self.ref_caches.get(key[0]) if key is not None else None
        if cache is not None and key is not None:
            return cache.lookup(key[1], span), None
        live, fused = self.ref_model, self._fused is not False
        if live is None and self.sharded:  # the sharded PEFT model, its adapter off
            out = model(StepModel.reference, ids, am, span, full_logits=need_logits, fused=fused)
            return out["logps"], out.get("logits")
        live = live if live is not None else self.accelerator.unwrap_model(model)
        with self.autocast_context():
            return reference_logps(live, ids, am, span, self.ref_model is None, need_logits, fused)

    def _forward(self, model: nn.Module, ids: Tensor, am: Tensor, mask: Tensor, attribute: bool,
                 full_logits: bool) -> tuple[Forward, Tensor, Tensor | None]:  # fmt: skip
        """One policy forward (`tidpo.training.forward.run_forward`) and its per-token log-probs
        where ``mask`` is 1: the fused path when the model's head is a plain linear map (checked
        once against the model's own logits). Sharded, all of it runs in `StepModel.policy`,
        under ZeRO-3 the attribution scores (``attribute``) included, from a forward of their
        own; else they are None here (taken later from this forward's graph)."""
        unwrapped: Any = unwrap_step_model(self.accelerator.unwrap_model(model))
        if self._fused is None:
            self._fused = output_head(unwrapped) is not None
        check = not self._fused_checked and self._fused and not full_logits
        if self.sharded:
            # ZeRO-3: the attribution inside, its own forward; FSDP2: from the returned embeddings
            inside = attribute and self.is_deepspeed_enabled
            out = model(StepModel.policy, ids, am, mask, attribute=attribute and not inside,
                        full_logits=full_logits, fused=self._fused, check_head=check,
                        attribution=self.args.attribution_target if inside else None)  # fmt: skip
            fwd = Forward(out["embeds"], None, out["logits"], None, out.get("keep"))
            logps, scores = out["logps"], out.get("scores")
            # every process takes the same path: the check is agreed on by all of them
            agrees = not check or not self._any_process(not bool(out["agrees"]))
        else:
            head = output_head(unwrapped) if self._fused else None
            fwd = run_forward(model, ids, am, attribute=attribute, full_logits=full_logits,
                              head=head, embed_from=unwrapped)  # fmt: skip
            # evaluation: the log-probs need a graph only as the attribution's target
            grad = model.training or self.args.attribution_target == "response_logprob"
            with torch.set_grad_enabled(torch.is_grad_enabled() and grad):
                agrees, logps = not check or head_agrees(fwd), token_logps(fwd, ids, mask)
            scores = None
        if check:
            self._fused_checked = True
            if not agrees:
                self._fused = False
                return self._forward(model, ids, am, mask, attribute, full_logits)
        return fwd, logps, scores

    # ---------------------------------------------------------------------------------- step
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        cfg = self.args
        # the module's own flag: a DeepSpeed engine's `training` stays True through eval()
        mode = "train" if self.accelerator.unwrap_model(model).training else "eval"
        ids, am, rm = inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
        b = ids.shape[0] // 2
        need_logits = cfg.needs_full_logits
        # Two spans: log-probs, margin and KL run over the response labels (shifted); weights
        # are placed over the weight span (unshifted; the whole sequence for weight_span
        # "sequence"), see `StepTensors`.
        response = rm[:, 1:]
        seq_kl = ref_lp = anchors = None
        rows, sampler, step = self._row_key(inputs), self.anchor_sampler, self.state.global_step
        gamma = None  # the triplet's weight this step (sparse refresh: k * gamma or 0)
        if sampler is not None and mode == "train":
            gamma = sampler.triplet_weight(cfg.gamma, step)
        # One autocast region for the whole step's forwards (sampling included), so autocast
        # casts the policy's weights once per step rather than once per forward call.
        with self.autocast_context():
            if cfg.uses_triplet and sampler is not None and gamma != 0:  # policy anchors
                policy = model if self.sharded else self.accelerator.unwrap_model(model)
                anchors = sampler.rows(policy, inputs, step, window=mode == "train")
                if mode == "train":  # optimiser steps since the anchors were sampled
                    self._metrics[mode]["anchors/age"].append(step - sampler.last_sampled_at)
            elif cfg.uses_triplet and sampler is None:  # the data's anchors
                anchors = (inputs["anchor_input_ids"], inputs["anchor_attention_mask"],
                           inputs["anchor_response_mask"])  # fmt: skip
            # Chosen and rejected rows: one forward (attribution reuses its graph below).
            fwd, pair_lp, scores = self._forward(model, ids, am, response, cfg.needs_attribution,
                                                 need_logits)  # fmt: skip
            policy_lp = pair_lp
            if cfg.uses_reference:
                ref_lp, ref_logits = self._reference_logps(model, ids, am, response, rows,
                                                           need_logits)  # fmt: skip
                if ref_logits is not None and fwd.keep is None:
                    with torch.set_grad_enabled(torch.is_grad_enabled() and mode == "train"):
                        seq_kl = F.sequential_kl(fwd.logits[:, :-1], ref_logits, response)
            if anchors is not None:
                # Anchor rows: a forward of their own, at their own (usually shorter) width.
                a_ids, a_am, a_rm = anchors
                a_resp = a_rm[:, 1:]
                a_lp = self._forward(model, a_ids, a_am, a_resp, False, False)[1]
                policy_lp, response = stack_rows(policy_lp, a_lp), stack_rows(response, a_resp)
                if ref_lp is not None:
                    ref_lp = stack_rows(
                        ref_lp, self._reference_logps(model, a_ids, a_am, a_resp)[0]
                    )
        if cfg.needs_attribution and scores is None:
            scores = attribution_scores(fwd, pair_lp, am, cfg.attribution_target)
        gen = None
        if cfg.loss == "tidpo" and cfg.weighting == "random":  # per micro-batch and process
            step, rank = self.state.global_step, self.accelerator.process_index
            gen = self.random_draws.generator(step, rank, mode == "train")
        wspan = weight_span_mask(am, rm, cfg.weight_span)
        special = torch.isin(ids, self.special_ids.to(ids.device)) if cfg.loss == "tidpo" else None
        given = inputs.get("token_weights") if cfg.weighting == "column" else None
        tensors = StepTensors(policy_lp, ref_lp, response, wspan, scores, seq_kl, special, given,
                              ids if cfg.tie_shared_prefix else None,
                              inputs.get("pair_weight"))  # fmt: skip
        details: dict[str, Tensor] = {}
        loss, metrics = step_loss(cfg, tensors, b, gen, details if return_outputs else None, gamma)
        if mode == "train" and not torch.isfinite(loss):
            # No update from this batch: a zero loss that still reaches every trainable
            # parameter (so DDP's reducer is satisfied), then the guard drops the gradients.
            self.guard.bad_in_step = True
            metrics = {}
            if self.sharded:  # through the log-probs, as the real loss: every process runs the
                # same gather/reduce-scatter collectives in its backward (ZeRO-3 hooks each
                # module whose output takes a gradient; NaN gradients are dropped by the guard)
                loss = torch.nan_to_num(policy_lp).sum() * 0.0
            else:
                loss = sum((p.reshape(-1)[0] for p in model.parameters() if p.requires_grad),
                           torch.zeros((), device=ids.device)) * 0.0  # fmt: skip
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        outputs = {"logits": fwd.logits, "policy_logps": policy_lp, **details}
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Evaluation loss without a training step's graph: none without attribution; with it,
        the attribution's alone (`attribution_graph`; sharded, the parameters stay as they are).
        Its gradient goes to the embeddings only: no parameter's ``.grad`` is touched. Unless
        only the loss is asked for, TRL's logits and labels too (`metric_outputs`)."""
        inputs = self._prepare_inputs(inputs)
        needs = self.args.needs_attribution
        graph = attribution_graph(model, freeze=not self.sharded) if needs else torch.no_grad()
        with graph, self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        if prediction_loss_only:
            return loss.detach(), None, None
        return (loss.detach(), *sig.metric_outputs(self, model, inputs))

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:  # fmt: skip
        """`Trainer.evaluate`, also of rows in TRL's formats (`sig.evaluation_set`)."""
        data = sig.evaluation_set(self, eval_dataset)
        return super().evaluate(data, ignore_keys, metric_key_prefix)

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test") -> sig.Prediction:  # fmt: skip
        """`Trainer.predict`, also of rows in TRL's formats: logits and labels as TRL's
        (`sig.metric_outputs`), the loss and the step metrics (`sig.with_step_means`)."""
        data = sig.evaluation_set(self, test_dataset)
        out = super().predict(data, ignore_keys, metric_key_prefix)
        return sig.with_step_means(self, out, metric_key_prefix)

    def _save(
        self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None
    ) -> None:
        """Sharded: `tidpo.training.sharding.save_step_model` (the gathered full weights)."""
        if not self.sharded:
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            out = Path(output_dir or str(self.args.output_dir))
            save_step_model(self.model, out, state_dict, self.processing_class, self.args)  # type: ignore[arg-type]
        return None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the step metrics (averaged since the last log) to the Trainer's record."""
        mode = "train" if self.model is not None and self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        means = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        self._metrics[mode].clear()
        if self.accelerator.num_processes > 1:  # each rank saw its own rows: average them
            means = rank_means(means)
        logs.update({f"{prefix}{key}": value for key, value in means.items()})
        if mode == "train":
            logs["train/skipped_steps"] = float(self.guard.skipped)
        super().log(logs, start_time)
