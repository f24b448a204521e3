"""Eval metric math, checked against hand-computed cases (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from retllm_lite.errors import BadInput
from retllm_lite.eval.metrics import (
    NOT_FOUND,
    first_hits,
    listwise_order,
    nearest,
    recall_at,
    rerank_prefix,
    top_orders,
)
from retllm_lite.eval.protocol import Settings, compose
from retllm_lite.rerank.scorer import Enhance, PairScore, PassScores, rank_order


def ps(p_true: float, entropy: float) -> PairScore:
    return PairScore(p_true, 1.0 - p_true, entropy, entropy)


def test_rank_order_without_tie_break_keeps_input_order_for_ties():
    # 0.701 and 0.708 both truncate to 0.70; the entropy would put index 2 first.
    scores = [ps(0.2, 0.1), ps(0.701, 0.9), ps(0.708, 0.3), ps(0.9, 0.5)]
    assert [i for i, _ in rank_order(scores, rule="paper")] == [3, 2, 1, 0]
    assert [i for i, _ in rank_order(scores, rule="paper", tie_break=False)] == [3, 1, 2, 0]
    # No ties under the raw rule: the flag changes nothing.
    assert [i for i, _ in rank_order(scores, rule="raw", tie_break=False)] == [3, 2, 1, 0]


# Hand-computed case: images 0, 1, 2; captions c0, c1 describe image 0, c2 image 1, c3 image 2.
OWNER = [0, 0, 1, 2]
SIM = np.array(
    [
        [0.9, 0.1, 0.5],  # c0: order 0, 2, 1 -> its image at position 0
        [0.2, 0.8, 0.3],  # c1: order 1, 2, 0 -> position 2
        [0.4, 0.6, 0.6],  # c2: 1 and 2 tie, gallery order keeps 1 first -> position 0
        [0.7, 0.1, 0.3],  # c3: order 0, 2, 1 -> position 1
    ]
)
# image -> text, rows of SIM.T:
#   image 0: 0.9 0.2 0.4 0.7 -> order c0 c3 c2 c1, first of {c0, c1} at 0
#   image 1: 0.1 0.8 0.6 0.1 -> order c1 c2 c0 c3 (c0, c3 tie), {c2} at 1
#   image 2: 0.5 0.3 0.6 0.3 -> order c2 c0 c1 c3, {c3} at 3


def test_recall_on_a_hand_computed_case():
    t2i = top_orders(SIM, 3)
    assert t2i.tolist() == [[0, 2, 1], [1, 2, 0], [1, 2, 0], [0, 2, 1]]
    hits = first_hits(t2i, [{o} for o in OWNER])
    assert hits.tolist() == [0, 2, 0, 1]
    assert recall_at(hits, (1, 2, 3)) == {1: 0.5, 2: 0.75, 3: 1.0}

    i2t = top_orders(SIM.T, 4)
    assert i2t.tolist() == [[0, 3, 2, 1], [1, 2, 0, 3], [2, 0, 1, 3]]
    hits = first_hits(i2t, [{0, 1}, {2}, {3}])
    assert hits.tolist() == [0, 1, 3]
    assert recall_at(hits, (1, 2, 3, 4)) == {1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 4: 1.0}

    # Rankings known only 2 deep: what lies deeper is not found, and counts as a miss.
    shallow = first_hits(top_orders(SIM, 2), [{o} for o in OWNER])
    assert shallow.tolist() == [0, NOT_FOUND, 0, 1]
    assert recall_at(shallow, (1, 2)) == {1: 0.5, 2: 0.75}
    assert recall_at([], (1,)) == {1: 0.0}


def test_rerank_keeps_ranks_beyond_k_in_coarse_order():
    order = [7, 3, 9, 1, 4]
    assert rerank_prefix(order, [2, 0, 1]) == [9, 7, 3, 1, 4]
    assert rerank_prefix(order, [0, 1]) == order
    with pytest.raises(ValueError):
        rerank_prefix(order, [0, 0, 1])
    assert listwise_order(order, 3, 2) == [9, 7, 3, 1, 4]
    assert listwise_order(order, 3, 0) == order
    with pytest.raises(ValueError):
        listwise_order(order, 3, 3)


def test_fine_stage_recall_by_hand():
    """Caption c1's image (0) is 3rd by CLIP; the VLM puts it first within k=3."""
    t2i = top_orders(SIM, 3)
    # VLM scores for c1's candidates in coarse order (images 1, 2, 0): P(True), entropy.
    scores = [ps(0.40, 0.2), ps(0.31, 0.3), ps(0.90, 0.9)]
    perm = [i for i, _ in rank_order(scores)]
    assert perm == [2, 0, 1]
    reranked = [rerank_prefix(o, perm) if q == 1 else list(o) for q, o in enumerate(t2i)]
    hits = first_hits(reranked, [{o} for o in OWNER])
    assert hits.tolist() == [0, 0, 0, 1]
    assert recall_at(hits, (1, 2, 3)) == {1: 0.75, 2: 1.0, 3: 1.0}
    # Reranking within k=2 cannot reach image 0: R@K for K >= k is the coarse stage's.
    perm2 = [i for i, _ in rank_order(scores[:2])]
    hits2 = first_hits(
        [rerank_prefix(o, perm2) if q == 1 else o for q, o in enumerate(t2i)], [{o} for o in OWNER]
    )
    assert recall_at(hits2, (2, 3)) == recall_at(first_hits(t2i, [{o} for o in OWNER]), (2, 3))


def test_compose_follows_the_backend_gate():
    plain, enh = PassScores(0.3, 0.6, 0.8, 2.0), PassScores(0.7, 0.2, 0.4, 1.0)
    off = compose(plain, enh, Enhance("off"))
    assert (off.p_true, off.enhanced, off.first_pass) == (0.3, False, None)
    fired = compose(plain, enh, Enhance("gated", 0.75, "top10"))  # 0.8 > 0.75
    assert (fired.p_true, fired.entropy, fired.enhanced, fired.first_pass) == (0.7, 0.4, True, plain)
    kept = compose(plain, enh, Enhance("gated", 0.8, "top10"))  # 0.8 is not above 0.8
    assert (kept.p_true, kept.enhanced) == (0.3, False)
    # the default signal: the True/False decision's entropy, H(1/3) / log 2 = 0.918
    assert compose(plain, enh, Enhance("gated", 0.9)).enhanced is True
    assert compose(plain, enh, Enhance("gated", 0.92)).enhanced is False
    always = compose(None, enh, Enhance("always"))
    assert (always.p_true, always.enhanced, always.first_pass) == (0.7, True, None)
    with pytest.raises(ValueError):
        compose(plain, None, Enhance("gated", 0.5))


def test_settings_plan_the_configurations():
    s = Settings(ks=(5, 3, 10, 5), enhance=("off", "gated:0.6", "always"), listwise=True)
    assert s.ks == (3, 5, 10) and s.depth == 10 and s.listwise_ks == (3, 5)
    names = [c.name for c in s.configs()]
    assert names[0] == "coarse (CLIP)"
    assert len(names) == len(set(names)) == 1 + 3 * 3 * 2 + 2
    assert "fine k=3, enhance gated:0.6, no tie-break" in names
    assert names[-2:] == ["listwise k=3", "listwise k=5"]
    assert [c.name for c in Settings(fine=False, ks=()).configs()] == ["coarse (CLIP)"]
    assert Settings(fine=False, recall_ks=(1,)).depth == 1 and Settings(recall_ks=(1,)).depth == 5
    assert Settings(listwise=True, directions=("t2i",)).configs()[-1].stage == "fine"
    for bad in ({"ks": (1, 5)}, {"enhance": ()}, {"enhance": ("sometimes",)}, {"directions": ("x2y",)},
                {"rule": "best"}, {"tie_breaks": ()}):  # fmt: skip
        with pytest.raises(BadInput):
            Settings(**bad)


def test_nearest_ranks_chunk_by_chunk_as_the_full_matrix_does():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    g[3] = g[1]  # a tie: gallery order decides
    full = top_orders(q @ g.T, 5)
    assert all(list(row).index(1) < list(row).index(3) for row in full)
    for chunk in (1, 3, 256):
        np.testing.assert_array_equal(nearest(q, g, 4, chunk=chunk), full[:, :4])
    np.testing.assert_array_equal(nearest(q, g, 99), full)
