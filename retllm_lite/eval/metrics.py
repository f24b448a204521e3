"""Recall@K for image-caption retrieval, and how the fine stage changes a ranking.

* text -> image: a caption's query succeeds at K when its image is among the first K.
* image -> text: an image's query succeeds at K when *any* of its captions is among the
  first K (the standard Flickr30k / COCO definition).

Recall@K is the fraction of queries that succeed. Rankings only need to be known as deep
as the largest K (and the largest rerank depth k): ``top_orders`` keeps that many.
The fine stage reorders the coarse top-k and leaves ranks beyond k in coarse order
(``rerank_prefix``); the listwise pick moves one candidate of the top-k to the front.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
NOT_FOUND = -1


def top_orders(sim: np.ndarray, depth: int, *, chunk: int = 256) -> np.ndarray:
    """Per row of ``sim`` (queries x gallery), the gallery indices of the ``depth`` best, best first.

    Ties keep gallery order (stable sort), so a ranking never depends on sort internals.
    """
    sim = np.asarray(sim)
    n, m = sim.shape
    depth = min(depth, m)
    out = np.empty((n, depth), dtype=np.int64)
    for a in range(0, n, chunk):
        out[a : a + chunk] = np.argsort(-sim[a : a + chunk], axis=1, kind="stable")[:, :depth]
    return out


def nearest(queries: np.ndarray, gallery: np.ndarray, depth: int, *, chunk: int = 256) -> np.ndarray:
    """``top_orders`` of ``queries @ gallery.T`` (cosine for unit vectors), a chunk of rows
    at a time: the full matrix (25k x 5k for COCO) is never held at once."""
    n, depth = len(queries), min(depth, len(gallery))
    out = np.empty((n, depth), dtype=np.int64)
    for a in range(0, n, chunk):
        out[a : a + chunk] = top_orders(queries[a : a + chunk] @ gallery.T, depth, chunk=chunk)
    return out


def first_hit(order: Sequence[int] | np.ndarray, relevant: Collection[int]) -> int:
    """0-based position of the first relevant item in ``order``, or NOT_FOUND."""
    for pos, item in enumerate(order):
        if int(item) in relevant:
            return pos
    return NOT_FOUND


def first_hits(
    orders: Iterable[Sequence[int] | np.ndarray], relevant: Sequence[Collection[int]]
) -> np.ndarray:
    """``first_hit`` per query."""
    return np.array([first_hit(o, r) for o, r in zip(orders, relevant, strict=True)], dtype=np.int64)


def recall_at(hits: Sequence[int] | np.ndarray, ks: Iterable[int] = RECALL_KS) -> dict[int, float]:
    """Recall@K for each K: the fraction of queries whose first hit is at a position < K."""
    h = np.asarray(hits, dtype=np.int64)
    if h.size == 0:
        return {int(k): 0.0 for k in ks}
    found = h != NOT_FOUND
    return {int(k): float(np.mean(found & (h < k))) for k in ks}


def rerank_prefix(order: Sequence[int] | np.ndarray, permutation: Sequence[int]) -> list[int]:
    """The coarse ``order`` with its first ``len(permutation)`` items put in the given order.

    ``permutation`` lists positions 0..k-1 of ``order``, best first (as ``rank_order`` returns).
    """
    k = len(permutation)
    if sorted(permutation) != list(range(k)):
        raise ValueError("permutation must list the positions 0..k-1 once each")
    return [int(order[i]) for i in permutation] + [int(x) for x in order[k:]]


def listwise_order(order: Sequence[int] | np.ndarray, k: int, pick: int) -> list[int]:
    """The pick (a position in the top-k) first, then the rest of ``order`` as it was."""
    if not 0 <= pick < min(k, len(order)):
        raise ValueError(f"pick {pick} is not a position in the top {k}")
    return [int(order[pick])] + [int(x) for i, x in enumerate(order) if i != pick]


def rsum(recalls: dict[str, dict[int, float]]) -> float:
    """Sum of every Recall@K reported (both directions), as papers report 'RSUM'."""
    return float(sum(v for by_k in recalls.values() for v in by_k.values()))
