"""``Retriever``: the two-stage RetLLM pipeline behind ``retllm search``.

Stage 1 (coarse): the query (text, image, or both) is embedded with the encoder that
built the index and the index returns its nearest items. Stage 2 (fine, optional): a
pair scorer (a VLM through llama.cpp) rescores the coarse top-k and reorders them.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .encode import Encoder, load_encoder, normalize
from .encode.base import ImageSource
from .errors import BadInput, ModelNotFound
from .index.backend import SearchIndex, open_index
from .index.catalog import ItemRow
from .index.dates import NO_DATE, item_date
from .paths import models_dir

DEFAULT_IMAGE_WEIGHT = 0.5
DEFAULT_RERANK_K = 5  # the paper reranks the coarse top-5


@dataclass(frozen=True)
class RerankOptions:
    """How the fine stage reorders the coarse top-k (see docs/rerank.md).

    ``k``: the rerank depth: how many of the coarse results the VLM rescores.
    ``enhance``: "off", "always", "gated", "gated:THRESHOLD[:SIGNAL]" (visual enhancement).
    ``rule``: "paper" (P(True) truncated to two decimals, ties to the lower full-vocabulary
    entropy, as the authors' code), "rounded", "raw", "normalized" (``rerank.scorer``).
    ``fusion``: alpha in [0, 1] mixing the min-max normalised CLIP score into the rule's value.
    ``listwise``: image -> text only: the model picks among the k captions by number (digit
    logits); captions are ordered by that choice distribution.
    """

    k: int = DEFAULT_RERANK_K
    enhance: str = "off"
    rule: str = "paper"
    fusion: float | None = None
    listwise: bool = False


@dataclass
class SearchHit:
    """One result. ``score`` is what the results are ordered by."""

    rank: int
    id: int
    score: float
    modality: str
    path: str | None = None
    text: str | None = None
    item_id: str | None = None
    width: int | None = None
    height: int | None = None
    clip_score: float | None = None
    coarse_rank: int | None = None
    # filled by the fine stage
    p_true: float | None = None
    p_false: float | None = None
    entropy: float | None = None
    vocab_entropy: float | None = None
    enhanced: bool | None = None
    # when it was taken (index/dates.py): the EXIF capture time, else the file's mtime
    date: str | None = None  # "YYYY-MM-DDTHH:MM:SS", local
    date_source: str | None = None  # "exif" | "mtime"
    camera: str | None = None

    def to_dict(self) -> dict:
        """Every field, always (absent values are None): a stable schema for --json."""
        return asdict(self)


def _display_path(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return os.fsdecode(raw)


def compose_query(
    text_vec: np.ndarray | None, image_vec: np.ndarray | None, image_weight: float = DEFAULT_IMAGE_WEIGHT
) -> np.ndarray:
    """Text, image, or both: ``normalize(w * image + (1 - w) * text)`` for a composed query."""
    if text_vec is None and image_vec is None:
        raise BadInput("give a text query, an image query (--image), or both")
    if text_vec is None:
        return normalize(image_vec)
    if image_vec is None:
        return normalize(text_vec)
    if not 0.0 <= image_weight <= 1.0:
        raise BadInput(f"image weight must be between 0 and 1, got {image_weight}")
    return normalize(image_weight * image_vec + (1.0 - image_weight) * text_vec)


def path_filter(include: Sequence[str] = (), exclude: Sequence[str] = ()):
    """Row filter from shell-style globs on the full path (``*/2023/*``, ``*.png``)."""
    if not include and not exclude:
        return None

    def where(row: ItemRow) -> bool:
        path = _display_path(row.path) or ""
        if include and not any(fnmatch.fnmatch(path, g) for g in include):
            return False
        return not any(fnmatch.fnmatch(path, g) for g in exclude)

    return where


class Retriever:
    """Search an index with text and/or image queries; optionally rerank with a scorer."""

    def __init__(self, index: SearchIndex, encoder: Encoder | None = None, scorer=None):
        self.index = index
        if encoder is None:
            encoder = self._encoder_for(index)
        index.check_encoder(encoder.info)
        self.encoder = encoder
        self.scorer = scorer

    @staticmethod
    def _encoder_for(index: SearchIndex) -> Encoder:
        info = index.encoder_info()
        if info is None:
            raise ModelNotFound(
                f"{index.location}: the index is empty (no encoder recorded yet)",
                hint="run 'retllm index FOLDER' first",
            )
        try:
            return load_encoder(info.location, variant=info.variant)
        except ModelNotFound:
            location = Path(info.location)
            if location.parent == models_dir():  # a pulled model that was removed
                hint = f"retllm models pull {location.name}"
            else:
                hint = "pass --clip-model DIR pointing at the same model"
            raise ModelNotFound(
                f"the model that built {index.location} ({info.name}, manifest "
                f"{info.manifest_sha256[:12]}…) is no longer at {info.location}",
                hint=hint,
            ) from None

    @classmethod
    def open(cls, index_path=None, clip_model=None, variant: str | None = None, scorer=None) -> Retriever:
        index = open_index(index_path)
        try:
            encoder = None
            if clip_model is not None:
                from .models.store import resolve_clip_dir  # a registry name or a folder

                built = index.encoder_info()
                encoder = load_encoder(
                    resolve_clip_dir(clip_model), variant=variant or (built.variant if built else None)
                )
            return cls(index, encoder, scorer)
        except BaseException:
            index.close()
            raise

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed_query(
        self,
        text: str | None = None,
        image: ImageSource | None = None,
        image_weight: float = DEFAULT_IMAGE_WEIGHT,
    ) -> np.ndarray:
        text_vec = self.encoder.embed_texts([text])[0] if text else None
        image_vec = None
        if image is not None:
            if isinstance(image, (str, os.PathLike)) and not Path(image).is_file():
                raise BadInput(f"{image}: no such image file", hint="check the --image path")
            from .encode import ImageLoadError

            try:
                image_vec = self.encoder.embed_images([image])[0]
            except ImageLoadError as exc:
                shown = image if isinstance(image, (str, os.PathLike)) else "the query image"
                raise BadInput(f"{shown}: {exc}", hint="pass a readable image file") from None
        return compose_query(text_vec, image_vec, image_weight)

    def search(
        self,
        text: str | None = None,
        image: ImageSource | None = None,
        k: int = 10,
        image_weight: float = DEFAULT_IMAGE_WEIGHT,
        threshold: float | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        modality: str | None = None,
        rerank: RerankOptions | None = None,
        where: Callable[[ItemRow], bool] | None = None,
    ) -> list[SearchHit]:
        """The k best items for the query, best first.

        ``where`` keeps only catalog rows it returns True for (on top of the globs and
        ``modality``): ``retllm serve``'s date and folder filters.

        With ``rerank``, the coarse top ``rerank.k`` are rescored by the scorer and reordered
        (the RetLLM two-stage pipeline); coarse results beyond them follow in CLIP order, up
        to ``k`` in all (their fine-stage fields stay None).
        """
        if k <= 0:
            raise BadInput(f"k must be positive, got {k}")
        if rerank is not None and rerank.k <= 0:
            raise BadInput(f"the rerank depth must be positive, got {rerank.k}")
        shown = k
        if rerank is not None:
            k = max(k, rerank.k)
        query = self.embed_query(text, image, image_weight)
        tests = [t for t in (path_filter(include, exclude), where) if t is not None]
        if modality is not None:
            tests.insert(0, lambda row: row.modality == modality)

        def keep(row: ItemRow) -> bool:
            return all(t(row) for t in tests)

        hits = []
        for row, score in self.index.search(query, k, keep if tests else None):
            if threshold is not None and score < threshold:
                break
            when = item_date(row)
            hits.append(
                SearchHit(
                    rank=len(hits) + 1,
                    id=row.id,
                    score=score,
                    clip_score=score,
                    coarse_rank=len(hits) + 1,
                    modality=row.modality,
                    path=_display_path(row.path),
                    text=row.text,
                    item_id=row.item_id,
                    width=row.width,
                    height=row.height,
                    **(when.to_dict() if when is not None else NO_DATE),
                )
            )
        if rerank is not None:
            head = self.rerank(hits[: rerank.k], text=text, image=image, options=rerank)
            tail = [replace(h, rank=len(head) + n) for n, h in enumerate(hits[rerank.k :], start=1)]
            hits = head + tail
        return hits[:shown]

    def rerank(
        self,
        hits: list[SearchHit],
        text: str | None = None,
        image: ImageSource | None = None,
        options: RerankOptions | None = None,
    ) -> list[SearchHit]:
        """Reorder coarse hits with the scorer; fills p_true, p_false, entropy, enhanced."""
        from .rerank.scorer import Item

        if self.scorer is None:
            raise BadInput(
                "reranking needs a scorer (a VLM)", hint="pass --vlm-model, or Retriever(scorer=...)"
            )
        options = options or RerankOptions()
        # a file deleted since it was indexed cannot be shown to the model: leave it out
        hits = [h for h in hits if h.path is None or Path(h.path).is_file()]
        if not hits:
            return []
        query = Item(text=text or None, image=image)
        if options.listwise:
            return self._rerank_listwise(hits, query)
        candidates = [Item(text=h.text, image=h.path, id=h.id) for h in hits]
        ranked = self.scorer.rank(
            query,
            candidates,
            rule=options.rule,
            fusion=options.fusion,
            clip_scores=[h.clip_score for h in hits],
            enhance=options.enhance,
        )
        out = []
        for new_rank, r in enumerate(ranked, start=1):
            h = hits[r.corpus_id]
            out.append(
                replace(
                    h,
                    rank=new_rank,
                    score=r.score,
                    p_true=r.p_true,
                    p_false=r.p_false,
                    entropy=r.entropy,
                    vocab_entropy=r.vocab_entropy,
                    enhanced=r.enhanced,
                )
            )
        return out

    def _rerank_listwise(self, hits: list[SearchHit], query) -> list[SearchHit]:
        if query.image is None or query.text or any(h.modality != "text" for h in hits):
            raise BadInput(
                "listwise reranking is for an image query against captions",
                hint="use --image without TEXT and --modality text, or drop --listwise",
            )
        pick_caption = getattr(self.scorer.backend, "pick_caption", None)
        if pick_caption is None:
            raise BadInput("this scorer's backend cannot rerank listwise")
        if len(hits) == 1:
            return hits
        pick = pick_caption(query.image, [h.text or "" for h in hits])
        order = sorted(range(len(hits)), key=lambda i: (-pick.probs[i], i))
        return [
            replace(hits[i], rank=n, score=float(pick.probs[i]), entropy=pick.entropy, enhanced=False)
            for n, i in enumerate(order, start=1)
        ]
