"""Incremental indexing of photo folders: embed new and changed files, drop deleted ones,
recognise moved and copied files by content without re-embedding.

How a run goes:

1. Scan the folders (``scan.py``): every image file with (size, mtime).
2. Files whose (size, mtime) match the catalog are done. The rest are read by a pool of
   worker threads, which fingerprint the bytes and, unless that content is already
   embedded, decode and preprocess them (PIL and numpy release the GIL).
3. The main thread embeds full batches and commits each batch, with the rows that
   describe it, in one SQLite transaction. Content already in the index is linked
   instead: a file whose old path vanished is a *move* (its row and vector keep their
   label), otherwise a *copy* (the vector bytes are copied).
4. At the end, rows under the scanned folders that were not seen are deleted. An index
   made before the current way of turning files into pixels
   (``transparency.PIXELS_VERSION``) re-embeds its images with transparency, once
   (``pixels_refresh.py``). Then the ANN snapshot is brought up to date.

Interrupting (Ctrl-C, SIGTERM, SIGKILL, power loss) loses at most the batch in flight:
every committed batch is complete, and the next run resumes from there because those
files now match the catalog.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..encode.base import PixelEncoder
from ..transparency import PIXELS_VERSION
from .capture import backfill as backfill_capture
from .collection_indexer import CollectionIndexer
from .file_load import LoadedFile as _Loaded
from .file_load import load_file
from .pixels_refresh import refresh_pixels
from .report import IndexReport, reason_class
from .scan import FileEntry, scan_changes, source_of
from .store import Index


class Indexer:
    """Keeps an ``Index`` in step with folders of images, using one ``Encoder``.

    ``index_collection`` brings in ``--texts``/``--items`` files (``collection_indexer.py``).
    """

    def __init__(
        self,
        index: Index,
        encoder: PixelEncoder,
        batch_size: int = 32,
        workers: int | None = None,
        hidden: bool = False,
        retry_errors: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        item_image_weight: float | None = None,
    ):
        if not index.writable:
            raise ValueError("Indexer needs an index opened with writable=True")
        self.index = index
        self.catalog = index.catalog
        self.encoder = encoder
        self.batch_size = batch_size
        self.workers = workers or min(4, (os.cpu_count() or 2))
        self.hidden = hidden
        self.retry_errors = retry_errors
        self.progress = progress  # progress(stage, done, total)
        index.set_encoder(encoder.info)
        self.item_image_weight = index.set_item_image_weight(item_image_weight)
        self._pixels_checked = False
        # defer(path, mtime_ns): True leaves a file out of this run, its old row kept (watch.py)
        self.defer: Callable[[bytes, int], bool] | None = None
        if index.pixels_version() != PIXELS_VERSION and not index.pixels_outdated():
            index.set_pixels_version()  # no image vectors yet: every one is made the current way
        self._collections = CollectionIndexer(
            index,
            encoder,
            self.item_image_weight,
            batch_size=batch_size,
            workers=self.workers,
            retry_errors=retry_errors,
            progress=progress,
            after=self._refresh_pixels,
        )

    def _refresh_pixels(self, report: IndexReport) -> None:
        """Once per Indexer, after its first scan: re-embed transparent images made before PIXELS_VERSION."""
        if self._pixels_checked:
            return

        def committed(n: int) -> None:
            report.reembedded += n

        report.unchecked = refresh_pixels(
            self.index,
            self.encoder,
            self.item_image_weight,
            batch_size=self.batch_size,
            workers=self.workers,
            progress=(lambda d, t: self.progress("pixels", d, t)) if self.progress else None,
            committed=committed,
        )
        self._pixels_checked = True

    # ---- worker side (threads: no SQLite here) ---------------------------------------
    def _load(self, entry: FileEntry, known: frozenset[str]) -> _Loaded:
        return load_file(self.encoder, entry, known)

    # ---- main loop -----------------------------------------------------------------
    def index_folders(self, roots: Sequence[str | os.PathLike]) -> IndexReport:
        """Bring the index in step with these folders (or single image files)."""
        report = IndexReport()
        t0 = time.perf_counter()
        roots_b = [os.path.abspath(os.fsencode(r)) for r in roots]
        try:
            todo, missing = self._scan(roots_b, report)
            self._process(todo, missing, roots_b, report)
            if missing:
                with self.catalog.transaction() as seq:
                    report.removed += self.catalog.delete_items([r.id for r in missing.values()], seq)
            self._refresh_pixels(report)
            backfill_capture(self.catalog, roots_b)  # photos of a schema-1 index: dated once
            report.ann = self.index.update_ann(
                progress=(lambda d, t: self.progress("ann", d, t)) if self.progress else None
            )
        except KeyboardInterrupt:
            report.interrupted = True
        report.seconds = time.perf_counter() - t0
        return report

    def _scan(self, roots: list[bytes], report: IndexReport) -> tuple[list[FileEntry], dict]:
        """Files to (re)process, and catalog rows under the roots that were not found."""
        todo: list[FileEntry] = []
        seen: set[bytes] = set()
        under: dict[bytes, object] = {}

        def recorded(path: bytes) -> tuple[int, int, str] | None:
            row = under.get(path)
            return None if row is None else (row.size, row.mtime_ns, row.status)

        for root in roots:
            for row in self.catalog.items_under(root):
                under[row.key] = row
            if os.path.isfile(root):
                row = self.catalog.by_key(root)
                if row is not None:
                    under[row.key] = row
            found = scan_changes(
                root, seen, recorded, hidden=self.hidden, retry_errors=self.retry_errors, defer=self.defer
            )
            todo += found.todo
            report.count_scan(found)
            with self.catalog.transaction(bump=False):
                self.catalog.replace_skipped(root, os.fsdecode(root), found.skipped)
        missing = {key: row for key, row in under.items() if key not in seen}
        return todo, missing

    def _process(self, todo: list[FileEntry], missing: dict, roots: list[bytes], report: IndexReport) -> None:
        if not todo:
            return
        known = frozenset(
            fp
            for (fp,) in self.catalog.db.execute(
                "SELECT fingerprint FROM items WHERE status='ok' AND fingerprint IS NOT NULL"
            )
        )
        missing_by_fp: dict[str, list] = collections.defaultdict(list)
        for row in missing.values():
            if row.status == "ok" and row.fingerprint:
                missing_by_fp[row.fingerprint].append(row)
        pending: list[_Loaded] = []  # decoded, waiting for a full batch
        linked: list[_Loaded] = []  # errors and already-known content, committed with the batch
        done = 0
        total = len(todo)
        lookahead = 2 * self.batch_size + self.workers
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="retllm-load")
        queue: collections.deque[Future] = collections.deque()
        it = iter(todo)
        try:
            while True:
                while len(queue) < lookahead:
                    entry = next(it, None)
                    if entry is None:
                        break
                    queue.append(pool.submit(self._load, entry, known))
                if not queue:
                    break
                item = queue.popleft().result()
                if item.pixels is not None:
                    pending.append(item)
                else:
                    linked.append(item)
                if len(pending) >= self.batch_size or len(linked) >= 4 * self.batch_size:
                    done += self._commit(pending, linked, missing, missing_by_fp, roots, report)
                    pending, linked = [], []
                    if self.progress:
                        self.progress("embed", done, total)
            if pending or linked:
                done += self._commit(pending, linked, missing, missing_by_fp, roots, report)
                if self.progress:
                    self.progress("embed", done, total)
        finally:
            for fut in queue:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _commit(self, pending, linked, missing, missing_by_fp, roots, report: IndexReport) -> int:
        vectors = None
        if pending:
            t = time.perf_counter()
            vectors = self.encoder.embed_pixels(np.stack([p.pixels for p in pending]))
            report.embed_seconds += time.perf_counter() - t
        cat = self.catalog
        counts: collections.Counter = collections.Counter()
        reasons: collections.Counter = collections.Counter()
        with cat.transaction() as seq:
            for item in linked:
                e = item.entry
                source = source_of(e.path, roots)
                base = {
                    "key": e.path,
                    "modality": "image",
                    "path": e.path,
                    "source": source,
                    "size": e.size,
                    "mtime_ns": e.mtime_ns,
                    "fingerprint": item.fingerprint,
                    **item.capture_columns(),
                }
                if item.error is not None:
                    cat.upsert_item(
                        seq, None, **base, status="error", error=item.error, width=None, height=None
                    )
                    counts["failed"] += 1
                    reasons[reason_class(item.error)] += 1
                    continue
                own = cat.by_key(e.path)
                if own is not None and own.fingerprint == item.fingerprint and own.status == "ok":
                    cat.move_item(own.id, e.path, e.path, source, e.size, e.mtime_ns)
                    counts["touched"] += 1
                    continue
                gone = missing_by_fp.get(item.fingerprint)
                if gone and own is None:
                    row = gone.pop()
                    missing.pop(row.key, None)
                    cat.move_item(row.id, e.path, e.path, source, e.size, e.mtime_ns)
                    counts["moved"] += 1
                    continue
                found = cat.vector_for_fingerprint(item.fingerprint, "image")
                if found is None:  # its twin was deleted meanwhile: embed after all
                    item.error = None
                    reloaded = self._load(e, frozenset())
                    if reloaded.pixels is None:
                        cat.upsert_item(seq, None, **base, status="error", error=reloaded.error)
                        counts["failed"] += 1
                        reasons[reason_class(reloaded.error or "")] += 1
                        continue
                    vec = self.encoder.embed_pixels(reloaded.pixels[None])[0]
                    cat.upsert_item(
                        seq,
                        vec,
                        **base,
                        status="ok",
                        error=reloaded.warning,
                        width=reloaded.width,
                        height=reloaded.height,
                    )
                    counts["indexed"] += 1
                    counts["warned"] += int(reloaded.warning is not None)
                    continue
                twin = cat.get(found[0])
                cat.upsert_item(
                    seq,
                    found[1],
                    **base,
                    status="ok",
                    width=twin.width if twin else None,
                    height=twin.height if twin else None,
                )
                counts["copied"] += 1
            for item, vec in zip(pending, vectors if vectors is not None else [], strict=True):
                e = item.entry
                cat.upsert_item(
                    seq,
                    vec,
                    key=e.path,
                    modality="image",
                    path=e.path,
                    source=source_of(e.path, roots),
                    size=e.size,
                    mtime_ns=e.mtime_ns,
                    fingerprint=item.fingerprint,
                    width=item.width,
                    height=item.height,
                    status="ok",
                    error=item.warning,
                    **item.capture_columns(),
                )
                counts["indexed"] += 1
                counts["warned"] += int(item.warning is not None)
        # only after the commit: the counts describe durable state
        for key, n in counts.items():
            setattr(report, key, getattr(report, key) + n)
        report.reasons.update(reasons)
        return len(pending) + len(linked)

    # ---- text and image+text collections (collection_indexer.py) ---------------------
    def index_collection(self, path: str | os.PathLike, kind: str) -> IndexReport:
        """Bring the items of one ``--texts``/``--items`` file into the index (see collections.py)."""
        return self._collections.index_collection(path, kind)
