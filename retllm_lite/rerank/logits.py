"""From next-token logits to the numbers the reranker uses.

* P(True), P(False): softmax over the **full** vocabulary at the answer position.
* ``entropy``: the *normalised top-10 entropy*: take the 10 largest next-token
  probabilities, renormalise them to sum to 1, compute their Shannon entropy in nats and
  divide by log(10). 0 = all mass on one token, 1 = ten equally likely. The authors'
  MemVR-style trigger applies it (threshold 0.75) to early exits at middle layers.
* ``vocab_entropy``: the Shannon entropy of the full next-token distribution in nats,
  ``-sum p log(p + 1e-10)``, exactly as the authors' code computes its tie-break.
* ``binary_entropy``: the entropy of the True/False decision alone,
  ``H(q) / log 2`` with ``q = P(True) / (P(True) + P(False))``: 1 at q = 0.5, 0.29 at
  q = 0.95. Final-layer quantity whose scale suits a threshold (the default gate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOP_K_ENTROPY = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    e = np.exp(x)
    return e / e.sum()


def topk_entropy(probs: np.ndarray, k: int = TOP_K_ENTROPY) -> float:
    """Normalised entropy of the renormalised top-k probabilities, in [0, 1]."""
    k = min(k, probs.size)
    if k < 2:
        return 0.0
    top = np.partition(probs, probs.size - k)[probs.size - k :]
    q = top / top.sum()
    q = q[q > 0]
    return float(-(q * np.log(q)).sum() / math.log(k))


VOCAB_ENTROPY_EPS = 1e-10  # the authors' code: -(p * log(p + 1e-10)).sum()


def vocab_entropy(probs: np.ndarray) -> float:
    """Shannon entropy (nats) of the full distribution, as the authors' tie-break computes it."""
    p = np.asarray(probs, dtype=np.float64)
    return float(-(p * np.log(p + VOCAB_ENTROPY_EPS)).sum())


def binary_entropy(p_true: float, p_false: float) -> float:
    """Normalised entropy of the True/False decision, in [0, 1] (1 when they are equal)."""
    total = p_true + p_false
    if total <= 0:
        return 1.0
    q = min(max(p_true / total, 0.0), 1.0)
    h = -sum(x * math.log(x) for x in (q, 1.0 - q) if x > 0)
    return h / math.log(2)


@dataclass(frozen=True)
class AnswerProbs:
    p_true: float
    p_false: float
    entropy: float  # normalised top-10
    vocab_entropy: float  # full-vocabulary Shannon entropy, nats
    exit_entropy: float | None = None  # the paper's early-exit trigger value (early_exit)


def answer_probs(logits: np.ndarray, true_id: int, false_id: int) -> AnswerProbs:
    if not np.all(np.isfinite(logits)):
        raise FloatingPointError("the model produced non-finite logits")
    p = softmax(logits)
    return AnswerProbs(float(p[true_id]), float(p[false_id]), topk_entropy(p), vocab_entropy(p))


@dataclass(frozen=True)
class ChoiceProbs:
    index: int  # 0-based position of the most likely choice
    probs: tuple[float, ...]  # renormalised over the choice tokens only
    mass: float  # total full-vocabulary probability on the choice tokens
    entropy: float  # normalised top-10 entropy of the full distribution


def choice_probs(logits: np.ndarray, choice_ids: list[int]) -> ChoiceProbs:
    """Read a pick among k choices from the logits of their (digit) tokens."""
    if not np.all(np.isfinite(logits)):
        raise FloatingPointError("the model produced non-finite logits")
    p = softmax(logits)
    sel = p[choice_ids]
    total = float(sel.sum())
    sub = softmax(np.asarray(logits, dtype=np.float64)[choice_ids])
    return ChoiceProbs(int(np.argmax(sub)), tuple(float(v) for v in sub), total, topk_entropy(p))
