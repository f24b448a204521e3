"""``ServedIndex``: what the web app's JSON API does, as plain Python over one index.

Every search goes through the same ``Retriever.search`` as ``retllm search``, so the API
and ``retllm search --json`` return the same hits for the same query. SQLite connections
belong to the thread that opened them, so the index is used from threads of its own:
one runs searches (the encoder and, once a rerank is asked for, the VLM), one answers
item, folder and status look-ups (so they never wait behind a rerank), and a small pool
makes thumbnails. Readers never take the writer lock: before each search the index is
refreshed if an indexer committed since (``Index.refresh``), so results follow a running
``retllm index`` and a search never fails because of it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import BadInput
from ..index.capture import read_capture
from ..index.catalog import ItemRow
from ..index.dates import NO_DATE
from ..index.store import Index
from ..pipeline import DEFAULT_RERANK_K, RerankOptions, Retriever, SearchHit
from .files import NotServable, ThumbnailCache, read_indexed_file
from .filters import item_date, make_filter

MAX_K = 200
MAX_RERANK_K = 50
ENHANCE_MODES = ("off", "gated", "always")
GATED = "gated:0.75"


@dataclass
class SearchRequest:
    """One query: text, an uploaded image, an indexed item ("more like this"), or text + image."""

    text: str | None = None
    image: bytes | None = None
    like: int | None = None
    image_weight: float = 0.5
    k: int = 30
    modality: str | None = None
    rerank: bool = False
    rerank_k: int = DEFAULT_RERANK_K
    enhance: str = "gated"
    after: str | None = None
    before: str | None = None
    folder: str | None = None

    def check(self) -> None:
        if not self.text and self.image is None and self.like is None:
            raise BadInput("give a text query, an image, or an item to find more like")
        if self.image is not None and self.like is not None:
            raise BadInput("give an uploaded image or 'like', not both")
        if not 1 <= self.k <= MAX_K:
            raise BadInput(f"k must be between 1 and {MAX_K}, got {self.k}")
        if not 1 <= self.rerank_k <= MAX_RERANK_K:
            raise BadInput(f"rerank_k must be between 1 and {MAX_RERANK_K}, got {self.rerank_k}")
        if not 0.0 <= self.image_weight <= 1.0:
            raise BadInput(f"image_weight must be between 0 and 1, got {self.image_weight}")
        if self.enhance not in ENHANCE_MODES:
            raise BadInput(f"enhance must be one of {', '.join(ENHANCE_MODES)}, got {self.enhance!r}")
        if self.modality not in (None, "image", "text", "image+text"):
            raise BadInput(f"modality must be image, text or image+text, got {self.modality!r}")


@dataclass
class ServeSettings:
    index_path: str | os.PathLike | None = None
    clip_model: str | None = None
    variant: str | None = None
    # builds the reranker on first use (None: the rerank switch is off, with the reason)
    scorer_factory: Callable[[], object] | None = None
    vlm_name: str | None = None
    no_rerank_reason: str = "no VLM configured (start 'retllm serve' with --vlm-model)"
    max_upload_bytes: int = 20 * 1024 * 1024
    default_k: int = 30
    rerank_default: bool = False
    thumbnails: ThumbnailCache = field(default_factory=ThumbnailCache)


class _Confined:
    """An object used only from one thread of its own."""

    def __init__(self, name: str, factory: Callable[[], object]):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.obj = self.pool.submit(factory).result()

    async def run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, self.obj, *args)

    def close(self, closer: Callable[[object], None]) -> None:
        self.pool.submit(closer, self.obj).result()
        self.pool.shutdown()


def hit_dict(hit: SearchHit, row: ItemRow | None) -> dict:
    """A search hit as the API returns it: ``SearchHit.to_dict()`` plus what the page shows."""
    out = hit.to_dict()
    moved = None
    if hit.p_true is not None and hit.coarse_rank is not None:
        moved = hit.coarse_rank - hit.rank  # > 0: moved up
    out["moved"] = moved
    has_image = hit.path is not None and hit.modality != "text"
    out["thumbnail"] = f"/api/items/{hit.id}/thumbnail?size=256" if has_image else None
    return out  # date, date_source and camera are the hit's own (the catalog's, as in --json)


class ServedIndex:
    """The operations behind /api/: search, item, thumbnail, folders, status."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.busy: dict | None = None  # what the search thread is doing, for /api/status
        self._scorer = None
        self._scorer_lock = threading.Lock()
        self._folders: tuple[int, list[str]] | None = None
        self._search = _Confined(
            "retllm-search",
            lambda: Retriever.open(
                settings.index_path, clip_model=settings.clip_model, variant=settings.variant
            ),
        )
        try:
            self._catalog = _Confined("retllm-catalog", lambda: Index.open(settings.index_path))
        except BaseException:
            self._search.close(lambda r: r.close())
            raise
        self._thumbs = ThreadPoolExecutor(2, thread_name_prefix="retllm-thumbs")

    def settings_summary(self) -> str:
        vlm = (
            self.settings.vlm_name
            if self.settings.scorer_factory
            else f"off ({self.settings.no_rerank_reason})"
        )
        return f"index {self._search.obj.index.directory}, reranker {vlm}"

    def close(self) -> None:
        self._thumbs.shutdown()
        self._catalog.close(lambda idx: idx.close())
        self._search.close(self._close_search)

    def _close_search(self, retriever: Retriever) -> None:
        if self._scorer is not None:
            self._scorer.close()
        retriever.close()

    # ---- search ----------------------------------------------------------------------
    async def search(self, request: SearchRequest) -> dict:
        request.check()
        where = make_filter(request.after, request.before, request.folder)  # bad dates: before queueing
        if request.rerank and self.settings.scorer_factory is None:
            raise BadInput(f"reranking is off: {self.settings.no_rerank_reason}")
        return await self._search.run(self._search_sync, request, where)

    def _search_sync(self, retriever: Retriever, request: SearchRequest, where) -> dict:
        t0 = time.perf_counter()
        index = retriever.index
        index.refresh()
        image = request.image
        if request.like is not None:
            row = index.catalog.get(request.like) if 0 < request.like < 2**63 else None
            if row is None or row.status != "ok":
                raise NotServable(404, f"no item {request.like} in the index")
            read_indexed_file(row)  # still the file that was indexed (else 409/410)
            image = os.fsdecode(row.path)  # as 'retllm search --image PATH' (and the reranker) read it
        elif image is not None and request.rerank:
            image = _decoded(image)  # the reranker takes a path or a PIL image, not bytes
        options = None
        if request.rerank:
            options = RerankOptions(
                k=request.rerank_k, enhance=GATED if request.enhance == "gated" else request.enhance
            )
            if retriever.scorer is None:
                self.busy = {"what": "loading the VLM", "since": time.time()}
                retriever.scorer = self._scorer = self.settings.scorer_factory()
            self.busy = {"what": f"reranking the top {request.rerank_k} with the VLM", "since": time.time()}
        try:
            hits = retriever.search(
                text=request.text or None,
                image=image,
                k=request.k,
                image_weight=request.image_weight,
                modality=request.modality,
                rerank=options,
                where=where,
            )
        finally:
            self.busy = None
        seq, vectors = index.loaded_state()
        rows = index.catalog.get_many([h.id for h in hits])
        return {
            "query": {
                "text": request.text or None,
                "image": "upload" if request.image is not None else None,
                "like": request.like,
                "image_weight": request.image_weight,
                "k": request.k,
                "modality": request.modality,
                "rerank": request.rerank,
                "rerank_k": request.rerank_k if request.rerank else None,
                "enhance": request.enhance if request.rerank else None,
                "after": request.after,
                "before": request.before,
                "folder": request.folder,
            },
            "reranked": options is not None,
            "seconds": round(time.perf_counter() - t0, 3),
            "index": {"seq": seq, "vectors": vectors},
            "hits": [hit_dict(h, rows.get(h.id)) for h in hits],
        }

    # ---- items -----------------------------------------------------------------------
    async def item(self, item_id: int) -> dict:
        row = await self._catalog.run(self._row, item_id)
        out = {
            "id": row.id,
            "modality": row.modality,
            "path": os.fsdecode(row.path) if row.path is not None else None,
            "name": os.path.basename(os.fsdecode(row.path)) if row.path is not None else None,
            "folder": os.path.dirname(os.fsdecode(row.path)) if row.path is not None else None,
            "item_id": row.item_id,
            "text": row.text,
            "size": row.size,
            "width": row.width,
            "height": row.height,
            **NO_DATE,
            "exif": None,
            "thumbnail": None,
            "image": None,
        }
        date = item_date(row)
        if date is not None:
            out.update(date.to_dict())
        if row.path is not None and row.modality != "text":
            out["thumbnail"] = f"/api/items/{row.id}/thumbnail?size=256"
            out["image"] = f"/api/items/{row.id}/thumbnail?size=1024"
            if row.taken_source is not None:  # the catalog has read the EXIF: no file read
                out["exif"] = _exif_dict(row.taken, row.camera)
            else:  # an index made before capture times were recorded (until its next run)
                loop = asyncio.get_running_loop()
                out["exif"] = await loop.run_in_executor(self._thumbs, _exif_of, row)
        return out

    async def thumbnail(self, item_id: int, px: int):
        row = await self._catalog.run(self._row, item_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thumbs, self.settings.thumbnails.get, row, px)

    @staticmethod
    def _row(index: Index, item_id: int) -> ItemRow:
        row = index.catalog.get(item_id) if 0 < item_id < 2**63 else None  # SQLite's INTEGER range
        if row is None or row.status != "ok":
            raise NotServable(404, f"no item {item_id} in the index")
        return row

    # ---- folders and status ----------------------------------------------------------
    async def folders(self) -> list[str]:
        return await self._catalog.run(self._folders_sync)

    def _folders_sync(self, index: Index) -> list[str]:
        seq = index.catalog.seq
        if self._folders is None or self._folders[0] != seq:
            found = {os.path.dirname(os.fsdecode(r.path)) for r in index.catalog.all_items("ok") if r.path}
            self._folders = (seq, sorted(found))
        return self._folders[1]

    async def status(self) -> dict:
        out = await self._catalog.run(self._status_sync)
        busy = self.busy
        out["busy"] = None if busy is None else {**busy, "seconds": round(time.time() - busy["since"], 1)}
        return out

    def _status_sync(self, index: Index) -> dict:
        stats = index.stats()
        errors = list(index.errors())
        counts = stats["items"]
        items = {"total": counts["vectors"]}
        for modality in ("image", "text", "image+text"):
            items[modality] = counts.get(f"{modality}:ok", 0)
        return {
            "index": stats["path"],
            "items": items,
            "seq": stats["seq"],
            "errors": {"count": len(errors), "first": [{"path": p, "reason": r} for p, r in errors[:20]]},
            "models": {
                "clip": stats["encoder"],
                "vlm": {
                    "available": self.settings.scorer_factory is not None,
                    "name": self.settings.vlm_name,
                    "loaded": self._scorer is not None,
                    "reason": None if self.settings.scorer_factory else self.settings.no_rerank_reason,
                },
            },
            "defaults": {"k": self.settings.default_k, "rerank": self.settings.rerank_default},
            "max_upload_bytes": self.settings.max_upload_bytes,
        }


def _decoded(data: bytes):
    """An uploaded image decoded once, upright, through indexing's guard (bombs are refused)."""
    from ..encode.preprocess import ImageLoadError, load_image

    try:
        return load_image(data).image
    except ImageLoadError as exc:
        raise BadInput(f"the uploaded image: {exc}", hint="send a readable image file") from None


def _exif_dict(taken: str | None, camera: str | None) -> dict | None:
    return {"datetime_original": taken, "camera": camera} if taken or camera else None


def _exif_of(row: ItemRow) -> dict | None:
    """The EXIF capture time and camera of an indexed image whose row has none yet, from the file."""
    try:
        data = read_indexed_file(row)
    except NotServable:
        return None
    found = read_capture(data, row.path)
    return _exif_dict(found.taken, found.camera)
