"""What the fine stage scores and what it returns: ``Item`` in, ``PairScore`` out.

``Item`` is a query or candidate (text, an image, or both). ``PassScores`` are the numbers
of one forward pass (what a backend returns per pair); ``PairScore`` is a pair's result
after gating (``gating``), with the first pass kept when enhancement fired.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retllm_lite.errors import BadInput
from retllm_lite.rerank.logits import binary_entropy

if TYPE_CHECKING:
    from retllm_lite.rerank.images import ImageInput


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
