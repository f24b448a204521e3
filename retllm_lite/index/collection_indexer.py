"""Ingesting ``--texts``/``--items`` collections into a local index (files read by ``collections.py``).

Text items are embedded with the text tower; image+text items get the fused vector
``normalize(w * image + (1 - w) * text)`` with the index's item image weight w. Items
whose text, image path and image (size, mtime) are unchanged are not re-embedded; items no
longer in the file are removed. Each batch is committed with its rows in one transaction,
as folder syncs are (``indexer.py``, whose ``Indexer.index_collection`` runs this).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..encode.base import PixelEncoder, normalize
from ..hashing import fingerprint_bytes
from .collections import CollectionItem, LineProblem, item_key, read_collection
from .file_load import LoadedFile, load_file
from .report import IndexReport
from .scan import FileEntry
from .store import Index


def _text_fingerprint(text: str) -> str:
    return fingerprint_bytes(b"text\0" + text.encode("utf-8", "surrogatepass"))


@dataclass
class _Pending:
    item: CollectionItem
    key: bytes
    size: int | None = None
    mtime_ns: int | None = None
    loaded: LoadedFile | None = None


class CollectionIndexer:
    """Keeps the items of collection files in step in an ``Index``, using one encoder.

    ``after(report)`` runs once the file's rows are committed, before the ANN snapshot is
    updated (the ``Indexer`` that owns this one re-embeds outdated images there).
    """

    def __init__(
        self,
        index: Index,
        encoder: PixelEncoder,
        item_image_weight: float,
        batch_size: int = 32,
        workers: int = 2,
        retry_errors: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        after: Callable[[IndexReport], None] | None = None,
    ):
        self.index = index
        self.catalog = index.catalog
        self.encoder = encoder
        self.item_image_weight = item_image_weight
        self.batch_size = batch_size
        self.workers = workers
        self.retry_errors = retry_errors
        self.progress = progress
        self._after = after or (lambda report: None)

    def index_collection(self, path: str | os.PathLike, kind: str) -> IndexReport:
        """Bring the items of one ``--texts``/``--items`` file into the index (as the module says)."""
        report = IndexReport()
        t0 = time.perf_counter()
        source = os.path.abspath(os.fspath(path))
        existing = {row.key: row for row in self.catalog.items_from_source(source)}
        problems: list[tuple[bytes, str]] = []
        todo: list[_Pending] = []
        seen: set[bytes] = set()
        for found in read_collection(path, kind):
            if isinstance(found, LineProblem):
                problems.append((os.fsencode(f"{source}:{found.line}"), found.reason))
                report.reasons[found.reason.split(" (")[0]] += 1
                continue
            key = item_key(source, found.item_id)
            seen.add(key)
            report.scanned += 1
            pending = _Pending(found, key)
            if found.image is not None:
                try:
                    st = os.stat(found.image)
                    pending.size, pending.mtime_ns = st.st_size, st.st_mtime_ns
                except OSError:
                    pass  # recorded as an error below
            row = existing.get(key)
            if (
                row is not None
                and row.text == found.text
                and row.path == found.image
                and row.modality == found.modality
                and row.size == pending.size
                and row.mtime_ns == pending.mtime_ns
                and (row.status == "ok" or not self.retry_errors)
            ):
                report.unchanged += 1
            else:
                todo.append(pending)
        report.skipped = len(problems)
        with self.catalog.transaction(bump=False):
            self.catalog.replace_skipped_for_source(source, problems)
        missing = [row.id for key, row in existing.items() if key not in seen]
        try:
            pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="retllm-load")
            try:
                for start in range(0, len(todo), self.batch_size):
                    batch = todo[start : start + self.batch_size]
                    futures = {
                        id(p): pool.submit(
                            load_file,
                            self.encoder,
                            FileEntry(p.item.image, p.size or 0, p.mtime_ns or 0),
                            frozenset(),
                        )
                        for p in batch
                        if p.item.image is not None and p.size is not None
                    }
                    for p in batch:
                        if id(p) in futures:
                            p.loaded = futures[id(p)].result()
                    self._commit_collection(batch, source, report)
                    if self.progress:
                        self.progress("embed", min(start + self.batch_size, len(todo)), len(todo))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if missing:
                with self.catalog.transaction() as seq:
                    report.removed += self.catalog.delete_items(missing, seq)
            self._after(report)
            report.ann = self.index.update_ann()
        except KeyboardInterrupt:
            report.interrupted = True
        report.seconds = time.perf_counter() - t0
        return report

    def _commit_collection(self, batch: list[_Pending], source: str, report: IndexReport) -> None:
        w = self.item_image_weight
        texts = [p.item.text for p in batch if p.item.text is not None]
        text_vecs = iter(self.encoder.embed_texts(texts)) if texts else iter(())
        image_ok = [p for p in batch if p.loaded is not None and p.loaded.pixels is not None]
        image_vecs = (
            iter(self.encoder.embed_pixels(np.stack([p.loaded.pixels for p in image_ok])))
            if image_ok
            else iter(())
        )
        counts: collections.Counter = collections.Counter()
        with self.catalog.transaction() as seq:
            for p in batch:
                it = p.item
                text_vec = next(text_vecs) if it.text is not None else None
                fields = {
                    "key": p.key,
                    "modality": it.modality,
                    "path": it.image,
                    "source": source,
                    "item_id": it.item_id,
                    "text": it.text,
                    "size": p.size,
                    "mtime_ns": p.mtime_ns,
                }
                if it.image is not None:
                    error = None
                    if p.size is None:
                        error = "image not found or unreadable"
                    elif p.loaded is None or p.loaded.pixels is None:
                        error = p.loaded.error if p.loaded else "image not loaded"
                    if error is not None:
                        shown = os.fsdecode(it.image)
                        self.catalog.upsert_item(
                            seq,
                            None,
                            **fields,
                            status="error",
                            error=f"{shown}: {error}",
                            fingerprint=None,
                            width=None,
                            height=None,
                        )
                        counts["failed"] += 1
                        report.reasons["missing or unreadable image"] += 1
                        continue
                    image_vec = next(image_vecs)
                    if text_vec is None:
                        vec, fp = image_vec, p.loaded.fingerprint
                    else:
                        vec = normalize(w * image_vec + (1.0 - w) * text_vec)
                        fp = fingerprint_bytes(
                            f"{p.loaded.fingerprint}\0{it.text}\0{w}".encode("utf-8", "surrogatepass")
                        )
                    self.catalog.upsert_item(
                        seq,
                        vec,
                        **fields,
                        status="ok",
                        error=p.loaded.warning,
                        fingerprint=fp,
                        width=p.loaded.width,
                        height=p.loaded.height,
                    )
                    counts["warned"] += int(p.loaded.warning is not None)
                else:
                    self.catalog.upsert_item(
                        seq,
                        text_vec,
                        **fields,
                        status="ok",
                        fingerprint=_text_fingerprint(it.text or ""),
                        width=None,
                        height=None,
                    )
                counts["indexed"] += 1
        for key, n in counts.items():
            setattr(report, key, getattr(report, key) + n)
