"""``Index``: a folder holding the catalog (SQLite) and, for big collections, an ANN snapshot.

::

    INDEX_DIR/
      catalog.sqlite3   items, vectors, encoder identity, change sequence (source of truth)
      ann-<seq>.hnsw    hnswlib snapshot, only above ANN_THRESHOLD vectors
      writer.lock       held by the one process allowed to write

Readers never take the lock and see one consistent state; a writer opens with
``Index.open(path, writable=True)``, which takes the lock.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..encode.base import EncoderInfo
from ..errors import BadInput, IndexNotFound, IndexWriteError
from ..paths import default_index_dir
from ..transparency import PIXELS_VERSION
from .catalog import CATALOG_NAME, Catalog, ItemRow
from .encoder_record import encoder_dict, encoder_from_meta, encoder_meta, require_same_encoder
from .lock import WriterLock
from .vectors import ANN_THRESHOLD, open_search, remove_stale_files, update_snapshot

# How image files were turned into pixels (transparency.PIXELS_VERSION). Absent: an index built
# before transparency was composited, whose transparent images need re-embedding.
PIXELS_KEY = "encoder.pixels"
DEFAULT_ITEM_IMAGE_WEIGHT = 0.5


class Index:
    def __init__(self, directory: Path, catalog: Catalog, lock: WriterLock | None, ann_threshold: int):
        self.directory = directory
        self.catalog = catalog
        self.lock = lock
        self.ann_threshold = ann_threshold
        self._search = None
        self._search_seq = -1

    # ---- lifecycle -----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike | None = None,
        writable: bool = False,
        wait: float = 0.0,
        ann_threshold: int = ANN_THRESHOLD,
    ) -> Index:
        """Open an index folder (default: the XDG data dir). ``writable`` creates it and locks it."""
        directory = Path(path).expanduser() if path else default_index_dir()
        directory = directory.absolute()
        if not writable:
            if not (directory / CATALOG_NAME).exists():
                raise IndexNotFound(f"no index at {directory}", hint=_create_hint(directory))
            return cls(directory, Catalog.open(directory, readonly=True), None, ann_threshold)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock = WriterLock(directory)
            lock.acquire(wait)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise IndexWriteError(
                    f"{directory}: the index folder is read-only ({exc.strerror}); nothing was changed",
                    hint="searches still work; to index, use a writable --index PATH",
                ) from None
            raise IndexWriteError(
                f"{directory}: cannot create or lock the index folder ({exc.strerror})",
                hint="choose a writable location with --index PATH",
            ) from None
        try:
            catalog = Catalog.open(directory, create=True)
            remove_stale_files(directory, catalog)
        except BaseException:
            lock.release()
            raise
        return cls(directory, catalog, lock, ann_threshold)

    def close(self) -> None:
        self.catalog.close()
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self.lock is not None

    @property
    def location(self) -> str:
        """Where the index is, for messages (``backend.SearchIndex``)."""
        return str(self.directory)

    # ---- encoder identity ----------------------------------------------------------
    def encoder_info(self) -> EncoderInfo | None:
        return encoder_from_meta(self.catalog.meta())

    def check_encoder(self, info: EncoderInfo) -> None:
        """Raise EncoderMismatch unless ``info`` is the encoder that built this index."""
        require_same_encoder(str(self.directory), self.encoder_info(), info)

    def set_encoder(self, info: EncoderInfo) -> None:
        self.check_encoder(info)
        with self.catalog.transaction(bump=False):
            for key, value in encoder_meta(info).items():
                self.catalog.set_meta(key, value)

    def pixels_version(self) -> str | None:
        """The way this index's image vectors were made (None: before it was recorded)."""
        return self.catalog.get_meta(PIXELS_KEY)

    def pixels_outdated(self) -> bool:
        """True if some image vectors may predate ``PIXELS_VERSION`` ('retllm index' refreshes them)."""
        if self.pixels_version() == PIXELS_VERSION:
            return False
        row = self.catalog.db.execute(
            "SELECT 1 FROM items WHERE status='ok' AND path IS NOT NULL LIMIT 1"
        ).fetchone()
        return row is not None

    def set_pixels_version(self) -> None:
        """Record that every image vector is made the current way (after any refresh)."""
        with self.catalog.transaction(bump=False):
            self.catalog.set_meta(PIXELS_KEY, PIXELS_VERSION)

    def set_item_image_weight(self, weight: float | None) -> float:
        """The image weight w of image+text items' fused vectors (fixed once such items exist)."""
        stored = self.catalog.get_meta("items.image_weight")
        if weight is None:
            return float(stored) if stored is not None else DEFAULT_ITEM_IMAGE_WEIGHT
        if not 0.0 <= weight <= 1.0:
            raise BadInput(f"item image weight must be between 0 and 1, got {weight}")
        if stored is not None and float(stored) != weight:
            mixed = self.catalog.db.execute(
                "SELECT COUNT(*) FROM items WHERE modality='image+text'"
            ).fetchone()[0]
            if mixed:
                raise BadInput(
                    f"{self.directory}: image+text items were embedded with image weight {stored}, "
                    f"not {weight}",
                    hint="keep the same --item-image-weight, or index them into another --index",
                )
        with self.catalog.transaction(bump=False):
            self.catalog.set_meta("items.image_weight", repr(float(weight)))
        return float(weight)

    # ---- search --------------------------------------------------------------------
    def _searcher(self):
        if self._search is None:
            info = self.encoder_info()
            dim = info.dim if info else 0
            # read before the vectors: a change committed in between makes refresh() reload
            self._search_seq = self.catalog.seq
            self._search = open_search(self.catalog, self.directory, dim, self.ann_threshold)
        return self._search

    def refresh(self) -> bool:
        """Drop the loaded vectors if the catalog changed since they were loaded (a writer ran).

        A long-lived reader (``retllm serve``) calls this before a search to see what an
        indexer committed meanwhile; it never takes the writer lock. Returns True if the
        next search reloads.
        """
        if self._search is None:
            return False
        if self.catalog.seq == self._search_seq:
            return False
        self._search = None
        return True

    def loaded_state(self) -> tuple[int, int]:
        """(change sequence, live vectors) of what searches currently run on (loads it if needed)."""
        searcher = self._searcher()
        return self._search_seq, len(searcher)

    @property
    def search_kind(self) -> str:
        return self._searcher().kind

    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        where: Callable[[ItemRow], bool] | None = None,
    ) -> list[tuple[ItemRow, float]]:
        """The k items nearest to a unit ``query`` vector (cosine), best first.

        ``where`` filters rows; filtered searches fetch more candidates until k pass.
        Rows deleted since the vectors were loaded are dropped, never returned.
        """
        searcher = self._searcher()
        total = len(searcher)
        fetch = k if where is None else min(total, max(4 * k, k + 64))
        while True:
            labels, scores = searcher.search(query, fetch)
            rows = self.catalog.get_many(labels.tolist())
            hits = []
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True):
                row = rows.get(label)
                if row is None or row.status != "ok":
                    continue
                if where is not None and not where(row):
                    continue
                hits.append((row, float(score)))
                if len(hits) == k:
                    return hits
            if fetch >= total:
                return hits
            fetch = min(total, fetch * 4)

    # ---- inspection ----------------------------------------------------------------
    def stats(self) -> dict:
        counts = self.catalog.counts()
        size = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
        info = self.encoder_info()
        return {
            "path": str(self.directory),
            "items": counts,
            "bytes_on_disk": size,
            "encoder": encoder_dict(info),
            "pixels": self.pixels_version(),
            "ann": self.catalog.get_meta("ann_file"),
            "seq": self.catalog.seq,
        }

    def errors(self) -> Iterator[tuple[str, str]]:
        """(path, reason) for every file that could not be indexed and every path skipped."""
        for row in self.catalog.all_items(status="error"):
            yield _shown(row), row.error or ""
        for path, _source, reason in self.catalog.skipped():
            yield os.fsdecode(path), reason

    def warnings(self) -> Iterator[tuple[str, str]]:
        """(path, what the decoder warned about) for indexed files that drew a warning."""
        for row in self.catalog.warned_items():
            yield _shown(row), row.error or ""

    def update_ann(self, progress=None) -> str:
        info = self.encoder_info()
        if info is None:
            return "none"
        return update_snapshot(self.catalog, self.directory, info.dim, self.ann_threshold, progress)


def _create_hint(directory: Path) -> str:
    """How to make the index that is missing: the command to run, with --index when it is not the default."""
    where = "" if directory == default_index_dir().expanduser().absolute() else f" --index {directory}"
    return f"create it by indexing a folder of photos: retllm index ~/Pictures{where}"


def _shown(row: ItemRow) -> str:
    return os.fsdecode(row.path) if row.path else row.key.decode("utf-8", "replace")
