"""From next-token logits to the numbers the reranker uses.

* P(True), P(False): softmax over the **full** vocabulary at the answer position.
* entropy: the paper's gating quantity, the *normalised top-10 entropy*: take the 10
  largest next-token probabilities, renormalise them to sum to 1, compute their Shannon
  entropy in nats and divide by log(10). 0 = all mass on one token, 1 = ten equally likely.
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


@dataclass(frozen=True)
class AnswerProbs:
    p_true: float
    p_false: float
    entropy: float


def answer_probs(logits: np.ndarray, true_id: int, false_id: int) -> AnswerProbs:
    if not np.all(np.isfinite(logits)):
        raise FloatingPointError("the model produced non-finite logits")
    p = softmax(logits)
    return AnswerProbs(float(p[true_id]), float(p[false_id]), topk_entropy(p))


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
