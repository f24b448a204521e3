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
from dataclasses import dataclass, field

import numpy as np

from ..encode.base import Encoder, normalize
from ..fingerprint import fingerprint_bytes
from ..transparency import PIXELS_VERSION
from .capture import backfill as backfill_capture
from .collections import CollectionItem, LineProblem, item_key, read_collection
from .file_load import LoadedFile as _Loaded
from .file_load import load_file
from .pixels_refresh import refresh_pixels
from .scan import FileEntry, Skipped, scan
from .store import Index


@dataclass
class IndexReport:
    scanned: int = 0
    unchanged: int = 0
    indexed: int = 0
    moved: int = 0
    copied: int = 0
    touched: int = 0  # same content, new mtime: nothing re-embedded
    reembedded: int = 0  # transparent images of an index made before PIXELS_VERSION
    unchecked: int = 0  # ... and files that could not be checked for it (checked next run)
    warned: int = 0  # indexed, but the decoder warned (recorded on the item)
    removed: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    interrupted: bool = False
    ann: str = "none"

    def __iadd__(self, other: IndexReport) -> IndexReport:
        """Combine the reports of several runs in one command (folders, then collections)."""
        for name in (
            "scanned",
            "unchanged",
            "indexed",
            "moved",
            "copied",
            "touched",
            "reembedded",
            "unchecked",
            "warned",
            "removed",
            "failed",
            "skipped",
            "seconds",
            "embed_seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        self.interrupted = self.interrupted or other.interrupted
        self.ann = other.ann
        return self

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {
            "scanned": self.scanned,
            "unchanged": self.unchanged,
            "indexed": self.indexed,
            "moved": self.moved,
            "copied": self.copied,
            "touched": self.touched,
            "reembedded": self.reembedded,
            "unchecked": self.unchecked,
            "warned": self.warned,
            "removed": self.removed,
            "failed": self.failed,
            "skipped": self.skipped,
            "reasons": dict(self.reasons),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "interrupted": self.interrupted,
            "ann": self.ann,
        }


def _text_fingerprint(text: str) -> str:
    return fingerprint_bytes(b"text\0" + text.encode("utf-8", "surrogatepass"))


@dataclass
class _Pending:
    item: CollectionItem
    key: bytes
    size: int | None = None
    mtime_ns: int | None = None
    loaded: _Loaded | None = None


class Indexer:
    """Keeps an ``Index`` in step with folders of images, using one ``Encoder``."""

    def __init__(
        self,
        index: Index,
        encoder: Encoder,
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
        for root in roots:
            skipped: list[tuple[bytes, str]] = []
            for row in self.catalog.items_under(root):
                under[row.key] = row
            if os.path.isfile(root):
                row = self.catalog.by_key(root)
                if row is not None:
                    under[row.key] = row
            for found in scan(root, hidden=self.hidden):
                if isinstance(found, Skipped):
                    skipped.append((found.path, found.reason))
                    report.reasons[found.reason] += 1
                    continue
                if found.path in seen:
                    continue
                seen.add(found.path)
                if self.defer is not None and self.defer(found.path, found.mtime_ns):
                    continue  # still being written: a later run takes it
                report.scanned += 1
                row = under.get(found.path)
                if (
                    row is not None
                    and row.size == found.size
                    and row.mtime_ns == found.mtime_ns
                    and (row.status == "ok" or not self.retry_errors)
                ):
                    report.unchanged += 1
                else:
                    todo.append(found)
            report.skipped += len(skipped)
            with self.catalog.transaction(bump=False):
                self.catalog.replace_skipped(root, os.fsdecode(root), skipped)
        missing = {key: row for key, row in under.items() if key not in seen}
        return todo, missing

    def _source_for(self, path: bytes, roots: list[bytes]) -> str:
        for root in roots:
            if path == root or path.startswith(root.rstrip(b"/") + b"/"):
                return os.fsdecode(root)
        return os.fsdecode(os.path.dirname(path))

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
                source = self._source_for(e.path, roots)
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
                    reasons[_reason_class(item.error)] += 1
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
                        reasons[_reason_class(reloaded.error or "")] += 1
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
                    source=self._source_for(e.path, roots),
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

    # ---- text and image+text collections ---------------------------------------------
    def index_collection(self, path: str | os.PathLike, kind: str) -> IndexReport:
        """Bring the items of one ``--texts``/``--items`` file into the index (see collections.py).

        Text items are embedded with the text tower; image+text items get the documented fused
        vector ``normalize(w * image + (1 - w) * text)`` with the index's item image weight w.
        Items whose text, image path and image (size, mtime) are unchanged are not re-embedded;
        items no longer in the file are removed.
        """
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
                            self._load, FileEntry(p.item.image, p.size or 0, p.mtime_ns or 0), frozenset()
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
            self._refresh_pixels(report)
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


def _reason_class(error: str) -> str:
    """Group one-line errors into a few reasons for the end-of-run summary."""
    e = error.lower()
    if "empty file" in e:
        return "empty file"
    if "too large" in e:
        return "image too large"
    if "not an image" in e or "cannot identify" in e:
        return "not an image"
    if "cannot read" in e:
        return "unreadable file"
    if "truncated" in e or "cannot decode" in e:
        return "corrupt image"
    return "other error"
