"""Incremental indexing of photo folders into a ``LanceIndex``, embedding locally or on Ray Data.

A run goes as the local indexer's (``indexer.py``) does:

1. Scan the folders (``scan.py``); files whose (size, mtime) match their row are done.
2. The rest are fingerprinted and, unless that content is already in the index, decoded
   and embedded: in this process (a few loader threads, batches through the encoder), or
   on Ray Data (``ray_embed.py``: actors with one ONNX session each) with ``ray``.
3. Results stream back to this process, the one writer, which commits them every
   ``commit_rows`` rows (or ``commit_seconds``) as one Lance commit. Content already in the
   index is linked, not re-embedded: a file whose old path vanished is a *move* (its row
   keeps its id and vector), otherwise a *copy*. Bad files are rows with status 'error'.
4. Rows under the scanned folders that were not found are deleted; the vector index is
   built above the threshold, or updated, and the table compacted.

Killed at any point, a run loses at most the rows not yet committed; the next run skips
what was committed (it matches by size and mtime) and, since rows are keyed by id, never
duplicates a file.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ..encode.base import PixelEncoder
from .file_load import EmbeddedFile, embed_loaded, load_file
from .lance_store import LanceIndex
from .ray_embed import RayOptions, embed_on_ray
from .report import IndexReport, reason_class
from .scan import FileEntry, scan_changes, source_of

DEFAULT_COMMIT_ROWS = 1024
DEFAULT_COMMIT_SECONDS = 30.0


class LanceIndexer:
    """Keeps a ``LanceIndex`` in step with folders of images, using one ``Encoder``."""

    def __init__(
        self,
        index: LanceIndex,
        encoder: PixelEncoder,
        batch_size: int = 32,
        workers: int | None = None,
        hidden: bool = False,
        retry_errors: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        ray: RayOptions | None = None,
        commit_rows: int = DEFAULT_COMMIT_ROWS,
        commit_seconds: float = DEFAULT_COMMIT_SECONDS,
        item_image_weight: float | None = None,
    ):
        if not index.writable:
            raise ValueError("LanceIndexer needs an index opened with writable=True")
        self.index = index
        self.encoder = encoder
        self.batch_size = batch_size
        self.workers = workers or min(4, (os.cpu_count() or 2))
        self.hidden = hidden
        self.retry_errors = retry_errors
        self.progress = progress
        self.ray = ray
        self.commit_rows = max(1, commit_rows)
        self.commit_seconds = commit_seconds
        index.set_encoder(encoder.info)

    # ---- the run ---------------------------------------------------------------------
    def index_folders(self, roots: Sequence[str | os.PathLike]) -> IndexReport:
        """Bring the index in step with these folders (or single image files)."""
        report = IndexReport()
        t0 = time.perf_counter()
        roots_b = [os.path.abspath(os.fsencode(r)) for r in roots]
        try:
            todo, under, missing = self._scan(roots_b, report)
            self._process(todo, under, missing, roots_b, report)
            if missing:
                report.removed += self.index.delete_ids(row["id"] for row in missing.values())
            report.ann = self.index.finish()
        except KeyboardInterrupt:
            report.interrupted = True
        report.seconds = time.perf_counter() - t0
        return report

    def index_collection(self, path, kind: str) -> IndexReport:
        from ..errors import BadInput

        raise BadInput(
            f"{path}: --{kind} collections go into a local index; a LanceDB index holds photo folders",
            hint="index the collection with --index PATH (a folder)",
        )

    def _scan(self, roots: list[bytes], report: IndexReport):
        import pyarrow.compute as pc

        table = self.index.scan_columns(["id", "path", "size", "mtime_ns", "fingerprint", "status"])
        under: dict[bytes, dict] = {}
        for root in roots:
            prefix = root.rstrip(b"/") + b"/"
            try:  # Arrow compares a UTF-8 pattern's bytes: exact for a UTF-8 root
                near = pc.starts_with(table["path"], pattern=prefix.decode("utf-8"))
                rows = table.filter(pc.or_(near, pc.equal(table["path"], root))).to_pylist()
            except UnicodeDecodeError:
                rows = table.to_pylist()
            for row in rows:
                if row["path"] == root or row["path"].startswith(prefix):
                    under[row["path"]] = row
        todo: list[FileEntry] = []
        seen: set[bytes] = set()

        def recorded(path: bytes) -> tuple[int, int, str] | None:
            row = under.get(path)
            return None if row is None else (row["size"], row["mtime_ns"], row["status"])

        for root in roots:
            found = scan_changes(root, seen, recorded, hidden=self.hidden, retry_errors=self.retry_errors)
            todo += found.todo
            report.count_scan(found)
            self.index.replace_skipped(root, os.fsdecode(root), found.skipped)
        missing = {path: row for path, row in under.items() if path not in seen}
        return todo, under, missing

    def _known(self) -> frozenset[str]:
        t = self.index.scan_columns(["fingerprint"], "status = 'ok' AND fingerprint IS NOT NULL")
        return frozenset(t["fingerprint"].to_pylist())

    def _embedded(self, todo: list[FileEntry], known: frozenset[str]) -> Iterator[list[EmbeddedFile]]:
        if self.ray is not None:
            info = self.encoder.info
            yield from embed_on_ray(
                todo, info.location, info.variant, info.key, known, self.ray, self.batch_size
            )
            return
        lookahead = 2 * self.batch_size + self.workers
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="retllm-load")
        queue: collections.deque[Future] = collections.deque()
        it = iter(todo)
        batch = []
        try:
            while True:
                while len(queue) < lookahead:
                    entry = next(it, None)
                    if entry is None:
                        break
                    queue.append(pool.submit(load_file, self.encoder, entry, known))
                if not queue:
                    break
                batch.append(queue.popleft().result())
                if len(batch) >= self.batch_size:
                    yield embed_loaded(self.encoder, batch)
                    batch = []
            if batch:
                yield embed_loaded(self.encoder, batch)
        finally:
            for fut in queue:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _process(self, todo, under, missing, roots, report: IndexReport) -> None:
        if not todo:
            return
        known = self._known()
        missing_by_fp: dict[str, list[dict]] = collections.defaultdict(list)
        for row in missing.values():
            if row["status"] == "ok" and row["fingerprint"]:
                missing_by_fp[row["fingerprint"]].append(row)
        buffered: list[EmbeddedFile] = []
        done = 0
        last = time.monotonic()
        for results in self._embedded(todo, known):
            buffered.extend(results)
            if len(buffered) >= self.commit_rows or time.monotonic() - last >= self.commit_seconds:
                done += self._commit(buffered, under, missing, missing_by_fp, roots, report)
                buffered = []
                last = time.monotonic()
                if self.progress:
                    self.progress("embed", done, len(todo))
        if buffered:
            done += self._commit(buffered, under, missing, missing_by_fp, roots, report)
            if self.progress:
                self.progress("embed", done, len(todo))

    # ---- one commit ------------------------------------------------------------------
    def _commit(self, results: list[EmbeddedFile], under, missing, missing_by_fp, roots, report) -> int:
        """Turn a block of results into rows and write them in one commit; returns files done."""
        counts: collections.Counter = collections.Counter()
        reasons: collections.Counter = collections.Counter()
        plans: list[tuple[EmbeddedFile, str, int, int | None]] = []  # (file, how, id, vector from id)
        copy_fps: list[str] = []
        for f in results:
            own = under.get(f.entry.path)
            if f.error is not None:
                plans.append((f, "failed", own["id"] if own else self.index.next_id(), None))
                continue
            if not f.known_content:
                plans.append((f, "indexed", own["id"] if own else self.index.next_id(), None))
                continue
            if own is not None and own["fingerprint"] == f.fingerprint and own["status"] == "ok":
                plans.append((f, "touched", own["id"], own["id"]))
                continue
            gone = missing_by_fp.get(f.fingerprint)
            if gone and own is None:
                row = gone.pop()
                missing.pop(row["path"], None)
                plans.append((f, "moved", row["id"], row["id"]))
                continue
            plans.append((f, "copied", own["id"] if own else self.index.next_id(), None))
            copy_fps.append(f.fingerprint)
        reused = self.index.get_many(
            [p[3] for p in plans if p[3] is not None], ["id", "vector", "width", "height"]
        )
        twins = self.index.vectors_for_fingerprints(copy_fps) if copy_fps else {}
        rows = []
        for f, how, row_id, from_id in plans:
            e = f.entry
            vector, width, height, error = f.vector, f.width, f.height, f.warning
            if how in ("touched", "moved", "copied"):
                src = reused.get(from_id) if from_id is not None else twins.get(f.fingerprint)
                if src is None or src["vector"] is None:  # its twin went meanwhile: embed after all
                    f = embed_loaded(self.encoder, [load_file(self.encoder, e)])[0]
                    how = "failed" if f.error is not None else "indexed"
                    vector, width, height, error = f.vector, f.width, f.height, f.warning
                else:
                    vector, width, height, error = src["vector"], src["width"], src["height"], None
            if how == "failed":
                error = f.error
                reasons[reason_class(f.error or "")] += 1
            counts[how] += 1
            counts["warned"] += int(how == "indexed" and f.warning is not None)
            rows.append(
                {
                    "id": row_id,
                    "path": e.path,
                    "source": source_of(e.path, roots),
                    "size": e.size,
                    "mtime_ns": e.mtime_ns,
                    "fingerprint": f.fingerprint,
                    "width": width if how != "failed" else None,
                    "height": height if how != "failed" else None,
                    "status": "error" if how == "failed" else "ok",
                    "error": error,
                    "vector": vector if how != "failed" else None,
                }
            )
        self.index.write_rows(rows)
        for row in rows:  # what is committed is this path's row now
            under[row["path"]] = row
        # only after the commit: the counts describe durable state
        for key, n in counts.items():
            setattr(report, key, getattr(report, key) + n)
        report.reasons.update(reasons)
        return len(results)
