"""Gated visual enhancement: when a pair is scored a second time with the image repeated.

``Enhance`` names the mode (off / always / gated at a threshold on a signal) and
``Enhance.fires`` is the one place the decision is made; ``gate`` runs it over a backend's
passes and ``combine`` takes a pair's result from passes already computed (``retllm
eval`` composes cached passes with it). See docs/rerank.md for the signals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from retllm_lite.errors import BadInput
from retllm_lite.rerank.logits import binary_entropy
from retllm_lite.rerank.pairs import PairScore

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


def combine(plain: Any | None, enhanced: Any | None, mode: Enhance) -> PairScore:
    """One pair's result under ``mode`` from its plain pass and its pass with the image again.

    ``gated`` takes the second pass exactly when ``mode.fires`` on the plain pass.
    """
    if mode.mode != "always":
        if plain is None:
            raise ValueError("the plain pass is missing")
        if not mode.fires(plain):
            return PairScore.of(plain)
    if enhanced is None:
        raise ValueError("the enhanced pass is missing")
    first = PairScore.of(plain).as_pass() if mode.mode == "gated" and plain is not None else None
    return PairScore.of(enhanced, enhanced=True, first_pass=first)


def gate(
    mode: Enhance,
    passes: Callable[[list[int], bool], Sequence[Any]],
    n: int,
    can_enhance: Sequence[bool],
) -> list[PairScore]:
    """Score ``n`` pairs under ``mode``: ``passes(indices, enhanced)`` runs one pass over them.

    ``can_enhance[i]`` is False for a pair with no image to repeat (text-text): it keeps its
    plain pass in every mode.
    """
    every = list(range(n))
    if mode.mode == "always":
        second = passes(every, True)
        return [PairScore.of(s, enhanced=bool(can_enhance[i])) for i, s in enumerate(second)]
    first = list(passes(every, False))
    if mode.mode == "off":
        return [PairScore.of(s) for s in first]
    fire = [i for i in every if can_enhance[i] and mode.fires(first[i])]
    results = [PairScore.of(s) for s in first]
    if fire:
        for i, s in zip(fire, passes(fire, True), strict=True):
            results[i] = combine(first[i], s, mode)
    return results
