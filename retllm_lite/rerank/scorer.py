"""The model-agnostic side of the fine stage: items, scores, the ranking rule, ``Scorer``.

A backend (``PairScorer``, e.g. ``LlamaMtmdScorer``) turns a query and its candidates into
``PairScore`` values; ``Scorer`` orders them the way the paper does:

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

Gated visual enhancement (``Enhance``) decides per pair from the first pass whether to
score again with the image inserted a second time; ``Enhance.fires`` is the one place
that decision is made (the backends and ``retllm eval`` call it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

from retllm_lite.errors import BadInput
from retllm_lite.rerank.logits import binary_entropy

if TYPE_CHECKING:
    from retllm_lite.rerank.images import ImageInput

Rule = Literal["paper", "rounded", "raw", "normalized"]
RULES: tuple[str, ...] = ("paper", "rounded", "raw", "normalized")
DEFAULT_GATE = 0.75  # the paper's threshold value
GateSignal = str  # "binary", "top10", or an early exit: "exit-L" / "exit-FIRST-LAST"
GATE_SIGNALS: tuple[str, ...] = ("binary", "top10", "exit-FIRST-LAST")
DEFAULT_GATE_SIGNAL: GateSignal = "binary"
PAPER_EXIT = "exit-6-15"  # the authors' range: 5 < layer < 16, 0-based


def is_gate_signal(value: str) -> bool:
    if value in ("binary", "top10"):
        return True
    if value.startswith("exit-"):
        from retllm_lite.rerank.early_exit import ExitLayers

        ExitLayers.parse(value)
        return True
    return False


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
    """The numbers from one forward pass (used for the first pass of gated enhancement).

    ``entropy`` is the normalised top-10 next-token entropy, ``vocab_entropy`` the
    full-vocabulary Shannon entropy in nats (the paper rule's tie-break).
    """

    p_true: float
    p_false: float
    entropy: float
    vocab_entropy: float
    exit_entropy: float | None = None  # the early-exit trigger's value, when captured

    @property
    def score(self) -> float:
        return normalized(self.p_true, self.p_false)

    @property
    def binary_entropy(self) -> float:
        return binary_entropy(self.p_true, self.p_false)


def normalized(p_true: float, p_false: float) -> float:
    total = p_true + p_false
    return p_true / total if total > 0 else 0.5


@dataclass(frozen=True)
class PairScore:
    """How well a candidate matches a query, read from the answer-token distribution.

    ``score`` is P(True) / (P(True) + P(False)). ``entropy`` is the normalised top-10
    next-token entropy, ``vocab_entropy`` the full-vocabulary Shannon entropy (nats).
    ``enhanced`` says whether the image was inserted a second time; with gated
    enhancement, ``first_pass`` holds the values before it fired.
    """

    p_true: float
    p_false: float
    entropy: float
    vocab_entropy: float
    enhanced: bool = False
    first_pass: PassScores | None = None
    exit_entropy: float | None = None
    score: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("p_true", "p_false", "entropy", "vocab_entropy"):
            if not math.isfinite(getattr(self, name)):
                raise FloatingPointError(f"{name} is not finite")
        object.__setattr__(self, "score", normalized(self.p_true, self.p_false))

    @classmethod
    def of(cls, s: Any, *, enhanced: bool = False, first_pass: PassScores | None = None) -> PairScore:
        """From anything with p_true, p_false, entropy, vocab_entropy (a pass's numbers)."""
        return cls(
            s.p_true,
            s.p_false,
            s.entropy,
            s.vocab_entropy,
            enhanced=enhanced,
            first_pass=first_pass,
            exit_entropy=getattr(s, "exit_entropy", None),
        )

    @property
    def binary_entropy(self) -> float:
        return binary_entropy(self.p_true, self.p_false)

    def as_pass(self) -> PassScores:
        return PassScores(self.p_true, self.p_false, self.entropy, self.vocab_entropy, self.exit_entropy)


@dataclass(frozen=True)
class Enhance:
    """Visual enhancement: ``off``, ``always``, or ``gated``: fire when the first pass's
    ``signal`` exceeds ``threshold``.

    Signals (all in [0, 1]):

    * ``binary`` (default): the normalised entropy of the True/False decision,
      ``H(q) / log 2`` with ``q = P(True) / (P(True) + P(False))``. At the default 0.75 it
      fires for 0.215 < q < 0.785 (the model is unsure) and stays shut at q = 0.95.
    * ``top10``: the final layer's normalised top-10 next-token entropy. The paper's 0.75
      applies this measure to *early exits at middle layers* (flat distributions); at the
      final layer of an instruction-tuned model nearly all mass is on True/False, so it is
      at most about log 2 / log 10 = 0.30 and a 0.75 gate never fires. Kept for ablations.
    * ``exit-FIRST-LAST`` (the authors' trigger: ``exit-6-15``): the largest normalised
      top-10 entropy of the early exits after decoder layers FIRST..LAST (0-based; the final
      norm and output head applied to each layer's last hidden state, ``early_exit``). The
      backend must capture those layers (``LlamaMtmdScorer(exit_layers=...)``); it costs one
      output-head product per layer and pair.
    """

    mode: Literal["off", "always", "gated"] = "off"
    threshold: float = DEFAULT_GATE
    signal: GateSignal = DEFAULT_GATE_SIGNAL

    def __post_init__(self) -> None:
        if not is_gate_signal(self.signal):
            raise BadInput(
                f"unknown gate signal {self.signal!r}", hint=f"use one of {', '.join(GATE_SIGNALS)}"
            )

    @property
    def exit_layers(self) -> str | None:
        """The early-exit layers a backend must capture for this mode, if any."""
        return self.signal if self.mode == "gated" and self.signal.startswith("exit-") else None

    def gate_value(self, first: Any) -> float:
        """The gating quantity of a first pass (anything with p_true, p_false, entropy)."""
        if self.signal == "top10":
            return float(first.entropy)
        if self.signal.startswith("exit-"):
            value = getattr(first, "exit_entropy", None)
            if value is None:
                raise BadInput(
                    f"gate signal {self.signal} needs early-exit entropies the backend did not capture",
                    hint=f"create the backend with exit_layers={self.signal!r}",
                )
            return float(value)
        return binary_entropy(first.p_true, first.p_false)

    def fires(self, first: Any) -> bool:
        """Whether this mode scores the pair again with the image inserted a second time."""
        if self.mode == "always":
            return True
        return self.mode == "gated" and self.gate_value(first) > self.threshold

    @classmethod
    def parse(cls, value: Enhance | str | bool | None, signal: str | None = None) -> Enhance:
        """Accepts an Enhance, "off", "always", "gated", "gated:0.6", "gated:0.6:top10",
        "gated:top10", True/False/None. ``signal`` overrides the gate signal."""
        if isinstance(value, Enhance):
            return value if signal is None else cls(value.mode, value.threshold, signal)  # type: ignore[arg-type]
        if value is None or value is False:
            return cls("off", signal=signal or DEFAULT_GATE_SIGNAL)  # type: ignore[arg-type]
        if value is True:
            return cls("always", signal=signal or DEFAULT_GATE_SIGNAL)  # type: ignore[arg-type]
        mode, *rest = str(value).split(":")
        if mode not in ("off", "always", "gated"):
            raise BadInput(
                f"unknown enhancement mode {value!r}",
                hint="use off, always, gated, gated:THRESHOLD or gated:THRESHOLD:SIGNAL",
            )
        if rest and mode != "gated":
            raise BadInput(f"only gated enhancement takes a threshold or signal, not {value!r}")
        threshold, named = DEFAULT_GATE, None
        for word in rest:
            if named is None and (word in ("binary", "top10") or word.startswith("exit-")):
                named = word
                continue
            try:
                threshold = float(word)
            except ValueError:
                raise BadInput(
                    f"bad enhancement threshold or signal in {value!r}",
                    hint=f"a number in [0, 1] and/or one of {', '.join(GATE_SIGNALS)}",
                ) from None
        return cls(mode, threshold, signal or named or DEFAULT_GATE_SIGNAL)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """ "off", "always", "gated:0.75" or "gated:0.75:top10" (parse() reads it back)."""
        if self.mode != "gated":
            return self.mode
        tail = "" if self.signal == DEFAULT_GATE_SIGNAL else f":{self.signal}"
        return f"gated:{self.threshold:g}{tail}"


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
