"""The model-agnostic side of the fine stage: items, scores, the ranking rule, ``Scorer``.

A backend (``PairScorer``, e.g. ``LlamaMtmdScorer``) turns a query and its candidates into
``PairScore`` values; ``Scorer`` orders them the way the paper does:

* rule ``"paper"``: P(True) rounded to two decimals, higher first; ties go to the lower
  next-token entropy (normalised top-10 entropy, see ``logits``); then input order.
  ``tie_break=False`` (an ablation) skips the entropy step: ties stay in input order.
* rule ``"raw"``: unrounded P(True), then entropy.
* rule ``"normalized"``: P(True) / (P(True) + P(False)), then entropy.
* ``fusion=alpha`` mixes in the coarse CLIP score:
  ``fused = alpha * clip_norm + (1 - alpha) * s`` where ``s`` is the rule's value
  (unrounded) and ``clip_norm`` is min-max normalised over the candidate list (all 0 when
  the CLIP scores are all equal). The paper rule then rounds ``fused`` to two decimals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from retllm_lite.errors import BadInput

if TYPE_CHECKING:
    from retllm_lite.rerank.images import ImageInput

Rule = Literal["paper", "raw", "normalized"]
RULES: tuple[str, ...] = ("paper", "raw", "normalized")
DEFAULT_GATE = 0.75  # the paper's threshold on the normalised top-10 entropy


@dataclass(frozen=True, eq=False)
class Item:
    """A query or a candidate: text, an image (path or PIL image), or both."""

    text: str | None = None
    image: ImageInput | None = None
    id: str | int | None = None

    def __post_init__(self) -> None:
        if not self.text and self.image is None:
            raise BadInput("an item needs text, an image, or both")

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @classmethod
    def coerce(cls, value: Item | str | Path | Any) -> Item:
        """``str`` -> text, ``Path`` or PIL image -> image, ``Item`` -> itself."""
        if isinstance(value, Item):
            return value
        if isinstance(value, str):
            return cls(text=value)
        return cls(image=value)


@dataclass(frozen=True)
class PassScores:
    """The numbers from one forward pass (used for the first pass of gated enhancement)."""

    p_true: float
    p_false: float
    entropy: float

    @property
    def score(self) -> float:
        return normalized(self.p_true, self.p_false)


def normalized(p_true: float, p_false: float) -> float:
    total = p_true + p_false
    return p_true / total if total > 0 else 0.5


@dataclass(frozen=True)
class PairScore:
    """How well a candidate matches a query, read from the answer-token distribution.

    ``score`` is P(True) / (P(True) + P(False)). ``entropy`` is the normalised top-10
    next-token entropy. ``enhanced`` says whether the image was inserted a second time;
    with gated enhancement, ``first_pass`` holds the values before it fired.
    """

    p_true: float
    p_false: float
    entropy: float
    enhanced: bool = False
    first_pass: PassScores | None = None
    score: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("p_true", "p_false", "entropy"):
            if not math.isfinite(getattr(self, name)):
                raise FloatingPointError(f"{name} is not finite")
        object.__setattr__(self, "score", normalized(self.p_true, self.p_false))


@dataclass(frozen=True)
class Enhance:
    """Visual enhancement: ``off``, ``always``, or ``gated`` at ``threshold`` on entropy."""

    mode: Literal["off", "always", "gated"] = "off"
    threshold: float = DEFAULT_GATE

    @classmethod
    def parse(cls, value: Enhance | str | bool | None) -> Enhance:
        """Accepts an Enhance, "off", "always", "gated", "gated:0.6", True/False/None."""
        if isinstance(value, Enhance):
            return value
        if value is None or value is False:
            return cls("off")
        if value is True:
            return cls("always")
        mode, _, thr = str(value).partition(":")
        if mode not in ("off", "always", "gated"):
            raise BadInput(
                f"unknown enhancement mode {value!r}", hint="use off, always, gated or gated:THRESHOLD"
            )
        if thr and mode != "gated":
            raise BadInput(f"only gated enhancement takes a threshold, not {value!r}")
        try:
            threshold = float(thr) if thr else DEFAULT_GATE
        except ValueError as exc:
            raise BadInput(f"bad enhancement threshold in {value!r}") from exc
        return cls(mode, threshold)  # type: ignore[arg-type]


class PairScorer(Protocol):
    """What a reranking backend implements."""

    def score_pairs(
        self,
        query: Item,
        candidates: Sequence[Item],
        *,
        enhance: Enhance | str = "off",
    ) -> list[PairScore]: ...


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rule_value(s: PairScore, rule: Rule) -> float:
    if rule == "normalized":
        return s.score
    return s.p_true


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
        values = [round(v, 2) for v in values]
    entropy = [s.entropy if tie_break else 0.0 for s in scores]
    order = sorted(range(len(scores)), key=lambda i: (-values[i], entropy[i], i))
    return [(i, values[i]) for i in order]


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
        """A Scorer over a directory written by ``convert_vlm`` (its manifest.json)."""
        from retllm_lite.rerank.manifest import read_manifest

        files = read_manifest(directory, verify=verify)
        return cls.from_gguf(files.model, files.mmproj, enhance=enhance, rule=rule, **backend_kwargs)

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
            for i, s in zip(idx, self.backend.score_pairs(g_query, cands, enhance=mode), strict=True):
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
        scores = self.backend.score_pairs(q, cands, enhance=mode)
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
