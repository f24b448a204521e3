"""The ranking rule: how pair scores order the candidates (and fusion with CLIP).

* rule ``"paper"``, what the authors' code does (``Codes/Qwen_vl.py``): P(True)
  truncated to two decimals (``int(p * 100) / 100``), higher first; ties go to the lower
  Shannon entropy of the full next-token distribution (``vocab_entropy``); then input
  order. ``tie_break=False`` (an ablation) skips the entropy step.
* rule ``"rounded"``: this project's earlier variant: P(True) *rounded* to two decimals,
  ties to the lower normalised top-10 entropy.
* rule ``"raw"``: unrounded P(True), then the normalised top-10 entropy.
* rule ``"normalized"``: P(True) / (P(True) + P(False)), then the normalised top-10 entropy.
* ``fusion=alpha`` mixes in the coarse CLIP score:
  ``fused = alpha * clip_norm + (1 - alpha) * s`` where ``s`` is the rule's value
  (unrounded) and ``clip_norm`` is min-max normalised over the candidate list (all 0 when
  the CLIP scores are all equal). The paper and rounded rules then cut ``fused`` to two
  decimals their way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from retllm_lite.errors import BadInput
from retllm_lite.rerank.pairs import PairScore

Rule = Literal["paper", "rounded", "raw", "normalized"]
RULES: tuple[str, ...] = ("paper", "rounded", "raw", "normalized")


@dataclass(frozen=True)
class Ranked:
    """One row of ``Scorer.rank``: ``corpus_id`` is the candidate's index in the input."""

    corpus_id: int
    score: float
    p_true: float
    p_false: float
    entropy: float
    enhanced: bool
    id: str | int | None = None
    clip_score: float | None = None
    vocab_entropy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rule_value(s: PairScore, rule: Rule) -> float:
    if rule == "normalized":
        return s.score
    return s.p_true


def truncate2(v: float) -> float:
    """The authors' two-decimal cut, ``int(p * 100) / 100`` (toward zero, float as is)."""
    return int(v * 100) / 100


def tie_entropy(s: PairScore, rule: Rule) -> float:
    """The entropy a rule breaks ties with: full-vocabulary for "paper", top-10 otherwise."""
    return s.vocab_entropy if rule == "paper" else s.entropy


def rank_order(
    scores: Sequence[PairScore],
    *,
    rule: Rule = "paper",
    fusion: float | None = None,
    clip_scores: Sequence[float] | None = None,
    tie_break: bool = True,
) -> list[tuple[int, float]]:
    """Sort indices by the rule; return ``(index, ranking score)`` best first.

    Equal values go to the lower entropy, then to input order; with ``tie_break=False``
    straight to input order.
    """
    if rule not in RULES:
        raise BadInput(f"unknown ranking rule {rule!r}", hint=f"use one of {', '.join(RULES)}")
    values = [rule_value(s, rule) for s in scores]
    if fusion is not None:
        if not 0.0 <= fusion <= 1.0:
            raise BadInput(f"fusion weight must be in [0, 1], not {fusion}")
        if clip_scores is None or len(clip_scores) != len(scores):
            raise BadInput("fusion needs one CLIP score per candidate")
        lo, hi = min(clip_scores, default=0.0), max(clip_scores, default=0.0)
        norm = [(c - lo) / (hi - lo) if hi > lo else 0.0 for c in clip_scores]
        values = [fusion * c + (1.0 - fusion) * v for c, v in zip(norm, values, strict=True)]
    if rule == "paper":
        values = [truncate2(v) for v in values]
    elif rule == "rounded":
        values = [round(v, 2) for v in values]
    entropy = [tie_entropy(s, rule) if tie_break else 0.0 for s in scores]
    order = sorted(range(len(scores)), key=lambda i: (-values[i], entropy[i], i))
    return [(i, values[i]) for i in order]
