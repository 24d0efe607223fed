"""Token-importance case studies (`tidpo explain`): the paper's Fig. 3 / B1 / B2 as data.

For one prompt and up to three responses (preferred, a policy-sampled anchor, non-preferred) this
computes, over each response's tokens: the raw gradient attribution ``I`` (Eq. 5-6, computed over
the full prompt + response sequence), the Gaussian prior (Eq. 7) and the hybrid weights (Eq. 8,
``scale="sum"``: the weights of one response sum to 1). Sub-word tokens are merged into words
(a word's weight is the SUM of its tokens' weights) and word weights are divided by the response's
largest word weight for display, so every panel spans [0, 1] on the same colour scale.

:func:`explain_pair` returns a plain JSON-serialisable dict; :func:`write_explain` writes
``explain.json``, ``explain.html`` and ``explain.png`` (see :mod:`tidpo.analysis.explain_render`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tidpo.data import eos_token_ids, merge_tokens, pad_token_id, prompt_ids, right_pad
from tidpo.errors import TidpoError
from tidpo.extras import has_module
from tidpo.fileio import write_atomic, write_json_atomic, write_text_atomic
from tidpo.training.config import AnchorSampling
from tidpo.training.generation import generate
from tidpo.training.objective import WeightSettings

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "PANEL_TITLES",
    "ExplainError",
    "explain_pair",
    "generate_anchor",
    "load_pair",
    "merge_tokens",
    "prompt_text",
    "scale_weights",
    "top_words",
    "write_explain",
]

PANEL_TITLES: dict[str, str] = {
    "chosen": "Preferred",
    "anchor": "Anchor",
    "rejected": "Non-preferred",
}
"""Panel key -> heading, in display order (the paper calls the anchor panel "Intermediate")."""


class ExplainError(TidpoError):
    """`tidpo explain` cannot run (missing pair, bad index, empty response, ...)."""


def _g(x: float) -> float:
    """Round to 6 significant digits for a tidy JSON file."""
    return float(f"{float(x):.6g}")


def scale_weights(values: Sequence[float]) -> list[float]:
    """Divide by the largest value (the largest becomes 1); all zeros if no value is positive."""
    top = max(values, default=0.0)
    if not top > 0:
        return [0.0 for _ in values]
    return [max(float(v), 0.0) / top for v in values]


def top_words(words: Sequence[Mapping[str, Any]], k: int) -> list[dict[str, Any]]:
    """The ``k`` words of highest weight (ties: earlier first), whitespace-only words excluded."""
    ranked = sorted(
        (i for i, w in enumerate(words) if str(w["text"]).strip()),
        key=lambda i: (-float(words[i]["weight"]), i),
    )
    return [
        {
            "index": i,
            "word": str(words[i]["text"]).strip(),
            "weight": words[i]["weight"],
            "scaled": words[i]["scaled"],
        }
        for i in ranked[: max(k, 0)]
    ]


def prompt_text(prompt: str | Sequence[Mapping[str, Any]]) -> str:
    """The prompt as display text (a message list becomes ``role: content`` lines)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return str(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def _panel(
    key: str,
    text: str,
    ids: list[int],
    scores: dict[str, list[float]],
    tokenizer: PreTrainedTokenizerBase,
    top_k: int,
) -> dict[str, Any]:
    """One response: per-token values, merged words, scaled word weights and top-k words."""
    special = {int(s) for s in getattr(tokenizer, "all_special_ids", [])}
    texts = [_decode(tokenizer, [t]) for t in ids]
    pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(ids)]
    hidden = [t in special for t in ids]
    groups = merge_tokens(texts, pieces, hidden)
    word_of = {i: w for w, group in enumerate(groups) for i in group}
    tokens = [
        {
            "id": int(t),
            "text": texts[i],
            "piece": pieces[i],
            "attribution": _g(scores["attribution"][i]),
            "prior": _g(scores["prior"][i]),
            "hybrid": _g(scores["hybrid"][i]),
            "shown": not hidden[i],
            "word": word_of.get(i),
        }
        for i, t in enumerate(ids)
    ]
    words: list[dict[str, Any]] = []
    for group in groups:
        word_text = _decode(tokenizer, [ids[i] for i in group])
        first = pieces[group[0]]
        if words and first.startswith("▁") and not word_text[:1].isspace():
            word_text = " " + word_text  # SentencePiece decode drops the leading space
        words.append(
            {
                "text": word_text,
                "tokens": group,
                "weight": sum(scores["hybrid"][i] for i in group),
                "attribution": _g(sum(scores["attribution"][i] for i in group)),
                "prior": _g(sum(scores["prior"][i] for i in group)),
            }
        )
    scaled = scale_weights([w["weight"] for w in words])
    for word, s in zip(words, scaled, strict=True):
        word["scaled"] = _g(s)
        word["weight"] = _g(word["weight"])
    return {
        "key": key,
        "title": PANEL_TITLES[key],
        "text": text,
        "tokens": tokens,
        "words": words,
        "max_word_weight": max((w["weight"] for w in words), default=0.0),
        "hidden_weight": _g(sum(scores["hybrid"][i] for i, h in enumerate(hidden) if h)),
        "top_k": top_words(words, top_k),
    }


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def generate_anchor(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[Mapping[str, Any]],
    seed: int = 0,
    sampling: AnchorSampling | None = None,
) -> str:
    """Sample an anchor response from the model given the prompt alone (seeded, no gradient).

    ``sampling`` (default: the paper's, `AnchorSampling`: top_k 50, top_p 0.95, temperature 0.8,
    64 new tokens; a run passes its own config's) decides the draw. The caller's random state is
    untouched. Returns the decoded text (special tokens dropped, surrounding whitespace stripped).
    """
    s = sampling or AnchorSampling()
    out = generate(model, [prompt_ids(tokenizer, prompt)], pad_token_id(tokenizer, model),
                   eos_token_ids(tokenizer, model), max_new_tokens=s.max_new_tokens,
                   sampling=s.generate_kwargs, seed=seed)  # fmt: skip
    return str(tokenizer.decode(out.tokens[0], skip_special_tokens=True)).strip()


def explain_pair(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[Mapping[str, Any]],
    chosen: str,
    rejected: str,
    anchor: str | None,
    lam: float = 0.7,
    sigma_div: float = 4.0,
    top_k: int = 8,
    *,
    anchor_source: str = "given",
    weights: WeightSettings | None = None,
    given: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Token and word importance of the chosen, anchor and rejected responses to ``prompt``.

    Each response is tokenized with the chat template (:func:`tidpo.data.tokenize_row`); the raw
    attribution runs over the full prompt + response sequence (one batched forward and backward,
    model in eval mode) and the response tokens' scores are kept. Prior and hybrid weights are
    computed over the response span with ``scale="sum"``.

    Args:
        model: an in-memory causal LM (the policy, before or after training).
        tokenizer: its tokenizer.
        prompt: a string or a message list.
        chosen, rejected: the preferred and non-preferred responses.
        anchor: the anchor response text (e.g. from :func:`generate_anchor`); None omits it.
        lam, sigma_div: the hybrid mix and prior width (Eq. 7-8).
        top_k: how many top words to list per panel.
        anchor_source: recorded in the anchor panel's ``source`` (``"generated"`` or
            ``"given"``).
        weights: how training weighs tokens (`tidpo.training.objective.WeightSettings`: weighting,
            special tokens, cap, attribution target); default: the paper's hybrid weights with
            ``lam`` and ``sigma_div``. Its lambda and sigma_div replace ``lam`` and ``sigma_div``.
        given: the data's own weights (``{"chosen": [...], "rejected": [...]}``, the
            ``chosen_weights`` / ``rejected_weights`` columns of ``weighting="column"``, per token
            or per word): they replace the hybrid weights of those panels (``weights_from``
            says which).

    Returns:
        ``{"prompt", "settings", "panels": [...]}``; each panel holds ``tokens`` (id, text, raw
        attribution, prior, hybrid, shown, word), ``words`` (text, token positions, summed
        weight/attribution/prior, ``scaled`` in [0, 1]), ``max_word_weight``, ``hidden_weight``
        (hybrid weight of the special tokens left out of the display, e.g. ``<|im_end|>``) and
        ``top_k``.
    """
    from tidpo.data import DataError, token_weights_of, tokenize_row
    from tidpo.functional import gaussian_prior
    from tidpo.training.forward import gradient_attribution
    from tidpo.training.objective import token_weights

    texts = {"chosen": chosen, "anchor": anchor, "rejected": rejected}
    keys = [k for k in PANEL_TITLES if texts[k] is not None]
    row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if anchor is not None:
        row["anchor"] = anchor
    try:
        ids = tokenize_row(row, tokenizer, None)
    except DataError as err:
        raise ExplainError(str(err)) from None
    if ids is None:
        raise ExplainError("a response has no token")
    p_ids = ids["prompt_ids"]
    responses = [ids[f"{k}_ids"] for k in keys]
    device = _model_device(model)
    pad = pad_token_id(tokenizer, model)
    input_ids, attention, span = (t.to(device) for t in right_pad([p_ids] * len(keys),
                                                                   responses, pad))  # fmt: skip
    ws = weights or WeightSettings(importance_lambda=lam, sigma_div=sigma_div)
    ws = dataclasses.replace(ws, weight_scale="sum")
    lam, sigma_div = ws.importance_lambda, ws.sigma_div
    raw = gradient_attribution(model, input_ids, attention, ws.attribution_target, span)
    prior = gaussian_prior(span, sigma_div)
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids, device=device))
    hybrid = token_weights(ws, raw, span, special=special)
    start = len(p_ids)
    panels = []
    for row_i, (key, resp) in enumerate(zip(keys, responses, strict=True)):
        stop = start + len(resp)
        scores = {
            name: values[row_i, start:stop].tolist()
            for name, values in (("attribution", raw), ("prior", prior), ("hybrid", hybrid))
        }
        from_data = given is not None and given.get(key) is not None
        if from_data:
            assert given is not None
            try:
                scores["hybrid"] = token_weights_of(given[key], tokenizer, resp, f"{key}_weights")
            except DataError as err:
                raise ExplainError(str(err)) from None
        panels.append(_panel(key, str(texts[key]), resp, scores, tokenizer, top_k))
        panels[-1]["weights_from"] = f"data ({key}_weights)" if from_data else "hybrid"
        if key == "anchor":
            panels[-1]["source"] = anchor_source
    return {
        "version": 1,
        "prompt": prompt_text(prompt),
        "prompt_tokens": len(p_ids),
        "settings": {
            "lam": lam,
            "sigma_div": sigma_div,
            "weights": dataclasses.asdict(ws),
            "top_k": top_k,
            "weight_scale": "sum",
            "word_weight": "sum of the word's token hybrid weights",
            "display_scale": "word weight / largest word weight of its response",
        },
        "panels": panels,
    }


def load_pair(dataset: str | Path, index: int) -> dict[str, Any]:
    """Row ``index`` (0-based) of a preference file: ``prompt``, ``chosen``, ``rejected`` (+ id).

    ``dataset`` may also be ``train`` or ``test`` for the bundled splits (when no such file
    exists).
    """
    from tidpo.data import bundled_dataset, load_preferences

    path = Path(dataset)
    if not path.exists() and str(dataset) in ("train", "test"):
        path = bundled_dataset(str(dataset))
    ds = load_preferences(path)
    if not 0 <= index < len(ds):
        raise ExplainError(f"--index {index} is out of range: {path} has {len(ds)} rows")
    row: dict[str, Any] = ds[index]
    given = {k: row[f"{k}_weights"] for k in ("chosen", "rejected") if row.get(f"{k}_weights")}
    return {
        "prompt": row["prompt"],
        "chosen": row["chosen"],
        "rejected": row["rejected"],
        "weights": given,
        "id": row.get("id"),
        "source": str(path),
        "index": index,
    }


def write_explain(result: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``explain.json``, ``explain.html`` and ``explain.png`` into ``out_dir``.

    Returns the paths by kind (``json``, ``html``, ``png``); without matplotlib (the extra
    ``tidpo[report]``) there is no ``png`` (`tidpo.extras.plots_note` says so).
    """
    from tidpo.analysis.explain_render import render_html, render_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "explain.json", "html": out / "explain.html"}
    write_json_atomic(dict(result), paths["json"])
    write_text_atomic(paths["html"], render_html(result))
    if has_module("matplotlib"):
        paths["png"] = out / "explain.png"
        write_atomic(paths["png"], lambda tmp: render_png(result, tmp))
    return paths
