"""``Scorer``: rerank with a VLM, shaped like sentence-transformers' CrossEncoder.

The model-agnostic side of the fine stage, over one small backend seam (``backend``): a
backend returns the answer probabilities of rendered pairs, one pass at a time;
``Scorer`` applies gated visual enhancement (``gating``) and the ranking rule
(``ranking``). The names of those modules are re-exported here for existing imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from retllm_lite.errors import BadInput
from retllm_lite.rerank.backend import PairBackend, PairScorer, load_backend
from retllm_lite.rerank.gating import (
    DEFAULT_GATE,
    DEFAULT_GATE_SIGNAL,
    GATE_SIGNALS,
    PAPER_EXIT,
    Enhance,
    GateSignal,
    combine,
    gate,
    is_gate_signal,
)
from retllm_lite.rerank.pairs import Item, PairScore, PassScores, normalized
from retllm_lite.rerank.prompts import enhance_side
from retllm_lite.rerank.ranking import RULES, Ranked, Rule, rank_order, rule_value, tie_entropy, truncate2

__all__ = [
    "DEFAULT_GATE", "DEFAULT_GATE_SIGNAL", "GATE_SIGNALS", "PAPER_EXIT", "RULES", "Enhance", "GateSignal",
    "Item", "PairBackend", "PairScore", "PairScorer", "PassScores", "Ranked", "Rule", "Scorer", "combine",
    "gate", "is_gate_signal", "load_backend", "normalized", "rank_order", "rule_value", "tie_entropy",
    "truncate2",
]  # fmt: skip


def score_with(backend: Any, query: Item, cands: Sequence[Item], mode: Enhance) -> list[PairScore]:
    """``mode`` over a backend: its ``score_pairs`` when it has one (``LlamaMtmdScorer``'s runs
    ``gating.gate`` with the images decoded once for both passes), else ``gating.gate`` over
    its ``answer_probs`` passes."""
    if hasattr(backend, "score_pairs"):
        return list(backend.score_pairs(query, cands, enhance=mode))
    answer = backend.answer_probs
    can = [enhance_side(c.has_image, query.has_image) is not None for c in cands]
    return gate(mode, lambda idx, enh: answer(query, [cands[i] for i in idx], enhanced=enh), len(cands), can)


Pair = tuple[Any, Any]


class Scorer:
    """Rerank with a VLM, shaped like sentence-transformers' CrossEncoder.

    ``predict`` scores (query, candidate) pairs; ``rank`` orders candidates for one query.
    Strings are text, paths and PIL images are images, ``Item`` holds both.
    """

    def __init__(
        self,
        backend: PairScorer,
        *,
        enhance: Enhance | str = "off",
        rule: Rule = "paper",
    ):
        self.backend = backend
        self.enhance = Enhance.parse(enhance)
        if rule not in RULES:
            raise BadInput(f"unknown ranking rule {rule!r}", hint=f"use one of {', '.join(RULES)}")
        self.rule: Rule = rule

    @classmethod
    def from_gguf(
        cls,
        model_path: str | Path,
        mmproj_path: str | Path | None,
        *,
        enhance: Enhance | str = "off",
        rule: Rule = "paper",
        **backend_kwargs: Any,
    ) -> Scorer:
        """A Scorer over ``LlamaMtmdScorer(model_path, mmproj_path, **backend_kwargs)``."""
        from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer

        return cls(LlamaMtmdScorer(model_path, mmproj_path, **backend_kwargs), enhance=enhance, rule=rule)

    @classmethod
    def from_manifest(
        cls,
        directory: str | Path,
        *,
        verify: bool = True,
        enhance: Enhance | str = "off",
        rule: Rule = "paper",
        **backend_kwargs: Any,
    ) -> Scorer:
        """A Scorer over a model directory; its manifest's format picks the backend (``BACKENDS``)."""
        return cls(load_backend(directory, verify=verify, **backend_kwargs), enhance=enhance, rule=rule)

    def close(self) -> None:
        """Free the backend's model (if it holds one)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @overload
    def predict(self, pairs: Pair, *, enhance: Enhance | str | None = None) -> PairScore: ...

    @overload
    def predict(self, pairs: Sequence[Pair], *, enhance: Enhance | str | None = None) -> list[PairScore]: ...

    def predict(
        self,
        pairs: Pair | Sequence[Pair],
        *,
        enhance: Enhance | str | None = None,
    ) -> PairScore | list[PairScore]:
        """Score pairs; pairs sharing a query are scored together (shared prefix)."""
        single = _is_single_pair(pairs)
        seq: list[Pair] = [pairs] if single else list(pairs)  # type: ignore[list-item]
        mode = self.enhance if enhance is None else Enhance.parse(enhance)
        groups: list[tuple[Item, list[int]]] = []
        queries = [Item.coerce(q) for q, _ in seq]
        for i, q in enumerate(queries):
            for g_query, idx in groups:
                if _same_item(g_query, q):
                    idx.append(i)
                    break
            else:
                groups.append((q, [i]))
        out: list[PairScore | None] = [None] * len(seq)
        for g_query, idx in groups:
            cands = [Item.coerce(seq[i][1]) for i in idx]
            for i, s in zip(idx, score_with(self.backend, g_query, cands, mode), strict=True):
                out[i] = s
        result = [s for s in out if s is not None]
        return result[0] if single else result

    def rank(
        self,
        query: Item | str | Any,
        candidates: Sequence[Item | str | Any],
        *,
        top_k: int | None = None,
        rule: Rule | None = None,
        fusion: float | None = None,
        clip_scores: Sequence[float] | None = None,
        enhance: Enhance | str | None = None,
    ) -> list[Ranked]:
        """Candidates best first; see the module doc for rules and fusion."""
        q = Item.coerce(query)
        cands = [Item.coerce(c) for c in candidates]
        if not cands:
            return []
        mode = self.enhance if enhance is None else Enhance.parse(enhance)
        scores = score_with(self.backend, q, cands, mode)
        order = rank_order(scores, rule=rule or self.rule, fusion=fusion, clip_scores=clip_scores)
        rows = [
            Ranked(
                corpus_id=i,
                score=value,
                p_true=scores[i].p_true,
                p_false=scores[i].p_false,
                entropy=scores[i].entropy,
                enhanced=scores[i].enhanced,
                id=cands[i].id,
                clip_score=None if clip_scores is None else float(clip_scores[i]),
                vocab_entropy=scores[i].vocab_entropy,
            )
            for i, value in order
        ]
        return rows[:top_k] if top_k is not None else rows


def _is_single_pair(pairs: Any) -> bool:
    return isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], (tuple, list))


def _same_item(a: Item, b: Item) -> bool:
    if a is b:
        return True
    if a.text != b.text or a.id != b.id:
        return False
    if a.image is None or b.image is None:
        return a.image is b.image
    if isinstance(a.image, (str, Path)) and isinstance(b.image, (str, Path)):
        return Path(a.image) == Path(b.image)
    return a.image is b.image
