"""A model's answers and their diversity as in the paper's Table B9: Self-BLEU, distinct-n, entropy.

:func:`generate_responses` answers prompts (chat template with the generation prompt; batched,
left-padded ``generate`` with the KV cache; greedy, or sampled with temperature 0.7 and top-p 0.9
and no top-k) and records the entropy of each generated token's distribution. The metrics:

* **Tokens.** Self-BLEU and distinct-n work on word tokens: :func:`word_tokens` splits a text into
  runs of word characters and single punctuation marks (``"Hi, you!"`` -> ``Hi`` ``,`` ``you``
  ``!``), case-sensitively, as standard BLEU does. No nltk is needed.
* **BLEU.** :func:`sentence_bleu` is BLEU-4 (Papineni et al., 2002) of one hypothesis against
  several references: modified n-gram precisions ``p_n`` (each hypothesis n-gram count clipped by
  its largest count in any one reference), geometric mean with uniform weights 1/4, and the brevity
  penalty ``BP = 1`` if ``c > r`` else ``exp(1 - r / c)``, with ``c`` the hypothesis length and
  ``r`` the reference length closest to ``c`` (the shorter one on a tie). Smoothing: add one to the
  numerator and the denominator of ``p_n`` for ``n > 1`` (Lin and Och, 2004, "BLEU+1"); ``p_1`` is
  not smoothed, so a hypothesis sharing no token with any reference scores 0 (and one shorter than
  n words has a smoothed ``p_n`` of 1/1). An empty hypothesis scores 0.
* **Self-BLEU** (Zhu et al., 2018): the mean over generations of the BLEU of each generation
  against all the others as references, in percent. Higher means less diverse; 100 when all
  generations are identical.
* **distinct-n** (Li et al., 2016): unique n-grams / total n-grams, pooled over all generations
  (n-grams never cross the boundary between two generations).
* **Token entropy**: the entropy (nats) of the model's next-token distribution ``softmax(raw
  logits)`` at each generated token, averaged over all generated tokens. Raw logits are those
  before temperature or top-p (``generate(..., output_logits=True)``), so the number describes the
  model, not the sampler.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tidpo.data import eos_token_ids, pad_token_id, prompt_ids
from tidpo.training.generation import generate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "SAMPLING_TEMPERATURE",
    "SAMPLING_TOP_P",
    "GenerationResult",
    "ProgressFn",
    "distinct_n",
    "entropy_from_logits",
    "generate_responses",
    "masked_mean_entropy",
    "ngram_counts",
    "row_mean_entropy",
    "self_bleu",
    "sentence_bleu",
    "word_tokens",
]

SAMPLING_TEMPERATURE = 0.7
SAMPLING_TOP_P = 0.9

ProgressFn = Callable[[str, int, int], None]
"""Called after each batch as ``progress(phase, done, total)``."""

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

NGram = tuple[str, ...]


def word_tokens(text: str) -> list[str]:
    """Split ``text`` into word runs (``\\w+``) and single punctuation marks, keeping case."""
    return _TOKEN_RE.findall(text)


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[NGram]:
    """Counts of the n-grams of ``tokens`` (empty when there are fewer than ``n`` tokens)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _closest_length(c: int, ref_lengths: Sequence[int]) -> int:
    """The reference length closest to ``c``; the shorter one on a tie."""
    return min(ref_lengths, key=lambda r: (abs(r - c), r))


def _bleu_from_counts(
    hyp: Sequence[Counter[NGram]],
    hyp_len: int,
    refs: Sequence[Sequence[Counter[NGram]]],
    ref_lengths: Sequence[int],
) -> float:
    """BLEU in [0, 1] from precomputed n-gram counts (``hyp[k]`` holds the (k+1)-grams)."""
    if hyp_len == 0 or not refs:
        return 0.0
    max_n = len(hyp)
    log_sum = 0.0
    for k in range(max_n):
        total = sum(hyp[k].values())
        matched = sum(
            min(count, max(ref[k].get(gram, 0) for ref in refs)) for gram, count in hyp[k].items()
        )
        if k == 0:
            if matched == 0:
                return 0.0
            precision = matched / total
        else:
            precision = (matched + 1) / (total + 1)
        log_sum += math.log(precision) / max_n
    r = _closest_length(hyp_len, ref_lengths)
    brevity = 1.0 if hyp_len > r else math.exp(1.0 - r / hyp_len)
    return brevity * math.exp(log_sum)


def sentence_bleu(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
    """BLEU (0-1) of ``hypothesis`` against ``references``, smoothed as in the module docstring.

    Raises:
        ValueError: ``max_n < 1``.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    hyp_tokens = word_tokens(hypothesis)
    ref_tokens = [word_tokens(r) for r in references]
    hyp = [ngram_counts(hyp_tokens, n) for n in range(1, max_n + 1)]
    refs = [[ngram_counts(t, n) for n in range(1, max_n + 1)] for t in ref_tokens]
    return _bleu_from_counts(hyp, len(hyp_tokens), refs, [len(t) for t in ref_tokens])


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float | None:
    """Self-BLEU in percent: mean BLEU-``max_n`` of each text against all the others.

    Returns None for fewer than two texts (there is nothing to compare against).
    """
    if len(texts) < 2:
        return None
    tokens = [word_tokens(t) for t in texts]
    counts = [[ngram_counts(t, n) for n in range(1, max_n + 1)] for t in tokens]
    lengths = [len(t) for t in tokens]
    scores = []
    for i in range(len(texts)):
        others = [j for j in range(len(texts)) if j != i]
        scores.append(
            _bleu_from_counts(
                counts[i], lengths[i], [counts[j] for j in others], [lengths[j] for j in others]
            )
        )
    return 100.0 * sum(scores) / len(scores)


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique n-grams / total n-grams over all ``texts`` (None when there is no n-gram at all)."""
    pooled: Counter[NGram] = Counter()
    for text in texts:
        pooled.update(ngram_counts(word_tokens(text), n))
    total = sum(pooled.values())
    return len(pooled) / total if total else None


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of ``softmax(logits)`` along the last axis, computed in float32.

    ``-inf`` logits (probability 0) contribute 0, as ``0 log 0 = 0``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(dim=-1)


def masked_mean_entropy(step_logits: Sequence[Tensor], valid: Tensor) -> tuple[float, int]:
    """Sum and count of per-token entropies over the valid generated positions.

    Args:
        step_logits: one ``[B, V]`` tensor of raw logits per generation step (``T`` steps), as
            ``generate(..., output_logits=True, return_dict_in_generate=True).logits``.
        valid: ``[B, T]`` 0/1 or bool, 1 where row ``b`` really generated a token at step ``t``
            (up to and including its end-of-sequence token; 0 on the padding after it).

    Returns:
        ``(sum of entropies, number of valid tokens)``; pool several batches by adding both.
    """
    if not step_logits:
        return 0.0, 0
    entropies = torch.stack([entropy_from_logits(s) for s in step_logits], dim=1)  # [B, T]
    mask = valid.to(entropies.device).bool()
    if mask.shape != entropies.shape:
        raise ValueError(
            f"valid {tuple(mask.shape)} does not match the logits' [B, T] {tuple(entropies.shape)}"
        )
    return float(entropies[mask].sum()), int(mask.sum())


def row_mean_entropy(step_logits: Sequence[Tensor], valid: Tensor) -> list[float | None]:
    """Per row, the mean entropy over its valid generated positions (None when it has none)."""
    if not step_logits:
        return [None] * valid.shape[0]
    entropies = torch.stack([entropy_from_logits(s) for s in step_logits], dim=1).cpu()
    mask = valid.bool()
    sums = (entropies * mask).sum(-1)
    counts = mask.sum(-1)
    return [float(s) / int(c) if int(c) else None for s, c in zip(sums, counts, strict=True)]


@dataclass
class GenerationResult:
    """Answers of one model: texts, generated token ids and the summed next-token entropy."""

    texts: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    """Generated ids of each answer, up to and including its end-of-sequence token."""
    entropy_sum: float = 0.0
    entropy_count: int = 0
    entropies: list[float | None] = field(default_factory=list)
    """Mean next-token entropy (nats) of each answer (None for an empty answer)."""

    @property
    def n_tokens(self) -> list[int]:
        """Number of generated tokens of each answer (its end-of-sequence token included)."""
        return [len(t) for t in self.token_ids]

    @property
    def mean_entropy(self) -> float | None:
        """Mean entropy (nats) over every generated token, None when nothing was generated."""
        return self.entropy_sum / self.entropy_count if self.entropy_count else None


def generate_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    sampling: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    phase: str = "generate",
) -> GenerationResult:
    """Answer every prompt in batches (`tidpo.training.generation.generate`: left-padded, KV
    cache, eval mode, seeded).

    Greedy by default; with ``sampling`` temperature :data:`SAMPLING_TEMPERATURE`, top-p
    :data:`SAMPLING_TOP_P` and no top-k. The entropy is that of ``softmax(raw logits)`` at each
    generated token (up to and including the end-of-sequence token). The caller's random state is
    untouched, and the same seed and batch size reproduce the answers.
    """
    eos = eos_token_ids(tokenizer, model)
    pad = pad_token_id(tokenizer, model)
    opts = {"temperature": SAMPLING_TEMPERATURE, "top_p": SAMPLING_TOP_P, "top_k": 0}
    result = GenerationResult()
    for start in range(0, len(prompts), batch_size):
        chunk = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        out = generate(model, chunk, pad, eos, max_new_tokens=max_new_tokens,
                       sampling=opts if sampling else None, seed=seed + start,
                       output_logits=True)  # fmt: skip
        for tokens in out.tokens:
            text_tokens = tokens[:-1] if tokens and tokens[-1] in eos else tokens
            result.texts.append(
                str(tokenizer.decode(text_tokens, skip_special_tokens=True)).strip()
            )
            result.token_ids.append(tokens)
        assert out.valid is not None
        total, count = masked_mean_entropy(out.step_logits, out.valid)
        result.entropy_sum += total
        result.entropy_count += count
        result.entropies += row_mean_entropy(out.step_logits, out.valid)
        if progress is not None:
            progress(phase, min(start + batch_size, len(prompts)), len(prompts))
    return result
