"""Eval metric math, checked against hand-computed cases (no models)."""

from __future__ import annotations

from retllm_lite.rerank.scorer import PairScore, rank_order


def ps(p_true: float, entropy: float) -> PairScore:
    return PairScore(p_true, 1.0 - p_true, entropy)


def test_rank_order_without_tie_break_keeps_input_order_for_ties():
    # 0.701 and 0.698 both round to 0.70; the entropy would put index 2 first.
    scores = [ps(0.2, 0.1), ps(0.701, 0.9), ps(0.698, 0.3), ps(0.9, 0.5)]
    assert [i for i, _ in rank_order(scores, rule="paper")] == [3, 2, 1, 0]
    assert [i for i, _ in rank_order(scores, rule="paper", tie_break=False)] == [3, 1, 2, 0]
    # No ties under the raw rule: the flag changes nothing.
    assert [i for i, _ in rank_order(scores, rule="raw", tie_break=False)] == [3, 1, 2, 0]
