"""What an evaluation runs (``Settings`` -> ``Config`` list) and what it reports.

Configurations, each scored text -> image and image -> text:

* ``coarse``: CLIP only, exact cosine similarity over the whole gallery.
* ``fine``: the coarse top-k reranked pointwise by the VLM, for every k, enhancement mode
  (off / gated at a threshold / always) and tie-break (entropy or none).
* ``listwise`` (image -> text only, optional): the VLM picks one of the top-k captions by
  its number (k from 2 to 9, one digit token each), as the paper's code does.

The reranked (or picked) top-k replaces the coarse top-k; ranks beyond k keep the coarse
order, so Recall@K for K >= k equals the coarse stage's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from retllm_lite.errors import BadInput
from retllm_lite.eval.metrics import RECALL_KS, rsum
from retllm_lite.rerank.gating import Enhance, combine
from retllm_lite.rerank.pairs import PairScore, PassScores
from retllm_lite.rerank.prompts import LISTWISE_MAX
from retllm_lite.rerank.ranking import RULES, Rule

Direction = Literal["t2i", "i2t"]
DIRECTIONS: tuple[Direction, ...] = ("t2i", "i2t")
LABELS = {"t2i": "text→image", "i2t": "image→text"}
Stage = Literal["coarse", "fine", "listwise"]
SCHEMA = "retllm-lite/eval"
SCHEMA_VERSION = 1

FINE_NOTE = (
    "Fine stage: the reranked top-k replaces the coarse top-k and ranks beyond k keep the "
    "coarse order, so Recall@K for K >= k equals the coarse stage's."
)


@dataclass(frozen=True)
class Settings:
    """Which configurations to run; the defaults keep a laptop run short."""

    ks: tuple[int, ...] = (5,)
    enhance: tuple[Enhance, ...] = (Enhance("off"), Enhance("gated"))
    tie_breaks: tuple[bool, ...] = (True, False)
    rule: Rule = "paper"
    listwise: bool = False
    fine: bool = True
    directions: tuple[Direction, ...] = DIRECTIONS
    recall_ks: tuple[int, ...] = RECALL_KS

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        object.__setattr__(self, "enhance", tuple(dict.fromkeys(Enhance.parse(e) for e in self.enhance)))
        object.__setattr__(self, "tie_breaks", tuple(dict.fromkeys(self.tie_breaks)))
        object.__setattr__(self, "recall_ks", tuple(sorted(set(self.recall_ks))))
        if self.fine and (not self.ks or min(self.ks) < 2):
            raise BadInput(f"rerank depths must be 2 or more, got {list(self.ks)}", hint="e.g. --k 3 --k 5")
        if self.fine and not self.enhance:
            raise BadInput("give at least one enhancement mode", hint="e.g. --enhance off,gated")
        if not self.tie_breaks:
            raise BadInput("give at least one tie-break setting")
        if self.rule not in RULES:
            raise BadInput(f"unknown ranking rule {self.rule!r}", hint=f"use one of {', '.join(RULES)}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or not self.directions:
            raise BadInput(f"unknown direction(s) {bad or '(none)'}", hint="use t2i, i2t or both")
        if not self.recall_ks or min(self.recall_ks) < 1:
            raise BadInput("Recall@K needs K >= 1")

    @property
    def depth(self) -> int:
        """How deep rankings must be known: the largest K and, with a fine stage, k."""
        return max((*self.recall_ks, *(self.ks if self.fine else ())))

    @property
    def listwise_ks(self) -> tuple[int, ...]:
        return tuple(k for k in self.ks if 2 <= k <= LISTWISE_MAX) if self.listwise else ()

    def configs(self) -> list[Config]:
        out = [Config("coarse")]
        if not self.fine:
            return out
        for k in self.ks:
            for e in self.enhance:
                out += [Config("fine", k, e, tb) for tb in self.tie_breaks]
        if "i2t" in self.directions:
            out += [Config("listwise", k) for k in self.listwise_ks]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks),
            "enhance": [enhance_name(e) for e in self.enhance],
            "gate_thresholds": sorted({e.threshold for e in self.enhance if e.mode == "gated"}),
            "tie_breaks": ["entropy" if tb else "none" for tb in self.tie_breaks],
            "rule": self.rule,
            "listwise": self.listwise,
            "listwise_ks": list(self.listwise_ks),
            "fine": self.fine,
            "directions": list(self.directions),
            "recall_ks": list(self.recall_ks),
        }


def enhance_name(e: Enhance) -> str:
    return e.name


@dataclass(frozen=True)
class Config:
    stage: Stage
    k: int | None = None
    enhance: Enhance | None = None
    tie_break: bool = True

    @property
    def name(self) -> str:
        if self.stage == "coarse":
            return "coarse (CLIP)"
        if self.stage == "listwise":
            return f"listwise k={self.k}"
        assert self.enhance is not None
        tail = "" if self.tie_break else ", no tie-break"
        return f"fine k={self.k}, enhance {enhance_name(self.enhance)}{tail}"

    def directions(self, wanted: Sequence[Direction]) -> list[Direction]:
        return [d for d in wanted if self.stage != "listwise" or d == "i2t"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "k": self.k,
            "enhance": enhance_name(self.enhance) if self.enhance else None,
            "tie_break": None if self.stage != "fine" else ("entropy" if self.tie_break else "none"),
        }


def compose(plain: PassScores | None, enhanced: PassScores | None, mode: Enhance) -> PairScore:
    """One pair's score under ``mode`` from its cached passes: the backend's own rule (``gating.combine``)."""
    return combine(plain, enhanced, mode)


@dataclass
class ConfigResult:
    """Recall@K per direction for one configuration, and what the fine stage did."""

    config: Config
    recall: dict[str, dict[int, float]]
    enhanced: dict[str, float] = field(default_factory=dict)  # fraction of reranked pairs
    top1_changed: dict[str, float] = field(default_factory=dict)  # vs the coarse ranking
    pick_positions: list[int] | None = None  # listwise: how often each position was picked

    @property
    def name(self) -> str:
        return self.config.name

    def rsum(self, directions: Sequence[str]) -> float | None:
        """RSUM over ``directions``; None when this configuration lacks one (listwise)."""
        if any(d not in self.recall for d in directions):
            return None
        return rsum({d: self.recall[d] for d in directions})

    def to_dict(self, directions: Sequence[str] = DIRECTIONS) -> dict[str, Any]:
        out = self.config.to_dict()
        for d, by_k in self.recall.items():
            out[d] = {f"R@{k}": v for k, v in by_k.items()}
        out["rsum"] = self.rsum(directions)
        if self.enhanced:
            out["enhanced"] = self.enhanced
        if self.top1_changed:
            out["top1_changed"] = self.top1_changed
        if self.pick_positions is not None:
            out["pick_positions"] = self.pick_positions
        return out


@dataclass
class EvalReport:
    dataset: dict[str, Any]
    settings: Settings
    models: dict[str, Any]
    results: list[ConfigResult]
    timings: dict[str, float]
    counts: dict[str, int]
    notes: list[str]

    def result(self, name: str) -> ConfigResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        from retllm_lite import __version__

        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "retllm_lite": __version__,
            "dataset": self.dataset,
            "settings": self.settings.to_dict(),
            "models": self.models,
            "results": [r.to_dict(self.settings.directions) for r in self.results],
            "timings": self.timings,
            "counts": self.counts,
            "notes": self.notes,
        }
