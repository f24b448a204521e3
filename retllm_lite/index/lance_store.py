"""``LanceIndex``: the index as a LanceDB database in a local folder or on object storage.

::

    URI/                     a local folder, or s3://bucket/prefix (gs://, az:// likewise)
      items.lance/           one row per image file: id, path (raw bytes), source, size,
                             mtime_ns, fingerprint, width, height, status, error, updated_at,
                             vector (float32[dim], null for files that could not be indexed)
      meta.lance/            key/value: encoder identity, pixels version, schema version
      skipped.lance/         paths met while scanning that are not items (loops, unreadable folders)
      writer.lock            local folders only: one writer at a time

Every write is one Lance commit (a new table version), atomic on a local disk and on object
storage: a killed writer leaves at most unreferenced data files, never a half-written row.
Rows are keyed by ``id`` (assigned by the one writer), so re-writing a batch replaces it.

Search is exact (a flat scan of the vectors) below ``LANCE_INDEX_THRESHOLD`` rows and uses a
LanceDB IVF_HNSW_SQ vector index above it, re-scored exactly (``refine_factor``); rows added
since the index was built are searched exactly until the next run folds them in
(``optimize``). The threshold is measured in ``benchmarks/lance_search.py`` (docs/scale.md).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..encode.base import EncoderInfo
from ..errors import IndexNotFound, IndexWriteError, require
from ..transparency import PIXELS_VERSION
from .catalog import ItemRow
from .encoder_record import encoder_dict, encoder_from_meta, encoder_meta, require_same_encoder
from .lock import WriterLock

SCHEMA_VERSION = "1"
LANCE_INDEX_THRESHOLD = int(os.environ.get("RETLLM_LANCE_INDEX_THRESHOLD", "5000"))
# IVF_HNSW_SQ search settings (recall@10 >= 0.99 against exact at 100k, benchmarks/lance_search.py)
NPROBES = 20
EF = 64
REFINE_FACTOR = 5

# the columns a search returns (never the vector: it stays in the store)
ROW_COLUMNS = [
    "id",
    "path",
    "source",
    "size",
    "mtime_ns",
    "fingerprint",
    "width",
    "height",
    "status",
    "error",
    "updated_at",
]


def item_schema(dim: int):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.binary(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("fingerprint", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("updated_at", pa.float64()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def _kv_schema():
    import pyarrow as pa

    return pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.string())])


def _skipped_schema():
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("path", pa.binary(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
        ]
    )


def storage_options_from_env(uri: str) -> dict[str, str]:
    """Object-store settings from the usual environment variables (AWS_*), for ``s3://`` URIs.

    Keys and region are read by the object store itself as well; the endpoint of an
    S3-compatible service (MinIO, Ceph, ...) comes from ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``, and plain ``http://`` endpoints are allowed explicitly.
    """
    if not uri.startswith("s3://"):
        return {}
    env = os.environ
    opts: dict[str, str] = {}
    for key, names in (
        ("aws_access_key_id", ("AWS_ACCESS_KEY_ID",)),
        ("aws_secret_access_key", ("AWS_SECRET_ACCESS_KEY",)),
        ("aws_session_token", ("AWS_SESSION_TOKEN",)),
        ("region", ("AWS_REGION", "AWS_DEFAULT_REGION")),
        ("endpoint", ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")),
    ):
        for name in names:
            if env.get(name):
                opts[key] = env[name]
                break
    if opts.get("endpoint", "").startswith("http://"):
        opts["allow_http"] = "true"
    return opts


def _row(d: dict) -> ItemRow:
    return ItemRow(
        id=d["id"],
        key=d["path"],
        modality="image",
        path=d["path"],
        source=d["source"],
        item_id=None,
        text=None,
        size=d["size"],
        mtime_ns=d["mtime_ns"],
        fingerprint=d["fingerprint"],
        width=d["width"],
        height=d["height"],
        status=d["status"],
        error=d["error"],
        vector_label=d["id"] if d["status"] == "ok" else None,
        vec_seq=None,
        updated_at=d["updated_at"] or 0.0,
    )


def _in_list(values) -> str:
    return ", ".join(str(int(v)) for v in values)


class LanceIndex:
    """An index held by LanceDB (see the module docstring); satisfies ``backend.SearchIndex``."""

    def __init__(self, uri: str, db, lock: WriterLock | None, index_threshold: int, writable: bool = False):
        self.uri = uri
        self._writable = writable
        self.db = db
        self.lock = lock
        self.index_threshold = index_threshold
        self._items = None
        self._meta: dict[str, str] | None = None
        self._next_id: int | None = None
        self._first_new = 0

    # ---- lifecycle -----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        uri: str,
        writable: bool = False,
        wait: float = 0.0,
        storage_options: dict[str, str] | None = None,
        index_threshold: int = LANCE_INDEX_THRESHOLD,
    ) -> LanceIndex:
        """Open (``writable``: create and, for a local folder, lock) the LanceDB index at ``uri``."""
        os.environ.setdefault("LANCE_LOG", "error")  # not Lance's notes ("no dataset, creating") on stderr
        lancedb = require("lancedb", "scale", "a LanceDB index (--index lance:URI)")
        local = "://" not in uri
        opts = storage_options if storage_options is not None else storage_options_from_env(uri)
        lock = None
        if local:
            directory = Path(uri)
            if not writable and not (directory / "meta.lance").exists():
                raise IndexNotFound(
                    f"no LanceDB index at {uri}",
                    hint=f"build one with 'retllm index FOLDER --index lance:{uri}'",
                )
            if writable:
                try:
                    directory.mkdir(parents=True, exist_ok=True)
                    lock = WriterLock(directory)
                    lock.acquire(wait)
                except OSError as exc:
                    raise IndexWriteError(
                        f"{uri}: cannot create or lock the LanceDB index folder ({exc.strerror})",
                        hint="choose a writable location with --index lance:PATH",
                    ) from None
        try:
            db = lancedb.connect(uri, storage_options=opts or None)
            index = cls(uri, db, lock, index_threshold, writable)
            index._open_tables(writable)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return index

    def _open_tables(self, writable: bool) -> None:
        try:
            meta_table = self.db.open_table("meta")
        except (ValueError, FileNotFoundError):
            if not writable:
                raise IndexNotFound(
                    f"no LanceDB index at {self.uri}",
                    hint=f"build one with 'retllm index FOLDER --index lance:{self.uri}'",
                ) from None
            meta_table = self.db.create_table("meta", schema=_kv_schema(), exist_ok=True)
        self._meta_table = meta_table
        self._meta = None
        meta = self.meta()
        if "schema_version" not in meta and writable:
            self._set_meta({"schema_version": SCHEMA_VERSION, "created_at": str(time.time())})
        elif meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise IndexWriteError(
                f"{self.location}: LanceDB index schema {meta['schema_version']} is not this "
                f"retllm-lite's ({SCHEMA_VERSION})",
                hint="upgrade retllm-lite, or index into a new --index lance:URI",
            )
        with contextlib.suppress(ValueError, FileNotFoundError):
            self._items = self.db.open_table("items")
        try:
            self._skipped = self.db.open_table("skipped")
        except (ValueError, FileNotFoundError):
            self._skipped = (
                self.db.create_table("skipped", schema=_skipped_schema(), exist_ok=True) if writable else None
            )

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> LanceIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        """Opened for writing (a local folder: and locked; object storage has no lock)."""
        return self._writable and (self.lock is not None or "://" in self.uri)

    @property
    def location(self) -> str:
        return f"lance:{self.uri}"

    # ---- meta ----------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        if self._meta is None:
            t = self._meta_table.to_arrow()
            self._meta = dict(zip(t["key"].to_pylist(), t["value"].to_pylist(), strict=True))
        return self._meta

    def _set_meta(self, values: dict[str, str]) -> None:
        import pyarrow as pa

        rows = pa.table({"key": list(values), "value": list(values.values())}, schema=_kv_schema())
        self._meta_table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(
            rows
        )
        self._meta = None

    def encoder_info(self) -> EncoderInfo | None:
        return encoder_from_meta(self.meta())

    def check_encoder(self, info: EncoderInfo) -> None:
        """Raise EncoderMismatch unless ``info`` is the encoder that built this index."""
        require_same_encoder(self.location, self.encoder_info(), info)

    def set_encoder(self, info: EncoderInfo) -> None:
        self.check_encoder(info)
        if self.encoder_info() is None:
            self._set_meta(encoder_meta(info))
        if self._items is None:
            self._items = self.db.create_table("items", schema=item_schema(info.dim), exist_ok=True)
        if self.meta().get("encoder.pixels") is None and self.count() == 0:
            self.set_pixels_version()

    def pixels_version(self) -> str | None:
        return self.meta().get("encoder.pixels")

    def pixels_outdated(self) -> bool:
        return self.pixels_version() != PIXELS_VERSION and self.count("status = 'ok'") > 0

    def set_pixels_version(self) -> None:
        self._set_meta({"encoder.pixels": PIXELS_VERSION})

    # ---- reading -------------------------------------------------------------------
    @property
    def items(self):
        return self._items

    def refresh(self) -> None:
        """See the latest committed version (a reader opened before a writer's commits)."""
        if self._items is not None:
            self._items.checkout_latest()
        else:
            with contextlib.suppress(ValueError, FileNotFoundError):
                self._items = self.db.open_table("items")
        self._meta_table.checkout_latest()
        self._meta = None

    def count(self, where: str | None = None) -> int:
        if self._items is None:
            return 0
        return self._items.count_rows(where) if where else self._items.count_rows()

    def scan_columns(self, columns: list[str], where: str | None = None):
        """An Arrow table of these columns for every row (or those matching ``where``)."""
        import pyarrow as pa

        if self._items is None:
            return pa.table({c: [] for c in columns})
        q = self._items.search().select(columns)
        if where:
            q = q.where(where)
        return q.limit(None).to_arrow()

    def get_many(self, ids, columns: list[str] | None = None) -> dict[int, dict]:
        ids = [int(i) for i in ids]
        out: dict[int, dict] = {}
        if self._items is None or not ids:
            return out
        cols = columns or [*ROW_COLUMNS, "vector"]
        for i in range(0, len(ids), 1000):
            t = self.scan_columns(cols, f"id IN ({_in_list(ids[i : i + 1000])})")
            for d in t.to_pylist():
                out[d["id"]] = d
        return out

    def vectors_for_fingerprints(self, fingerprints) -> dict[str, dict]:
        """One ok row (with its vector) per fingerprint found."""
        fps = sorted(set(fingerprints))
        out: dict[str, dict] = {}
        for i in range(0, len(fps), 500):
            chunk = fps[i : i + 500]
            quoted = ", ".join(f"'{fp}'" for fp in chunk if all(c in "0123456789abcdef" for c in fp))
            if not quoted:
                continue
            t = self.scan_columns(
                ["id", "fingerprint", "width", "height", "vector"],
                f"status = 'ok' AND fingerprint IN ({quoted})",
            )
            for d in t.to_pylist():
                out.setdefault(d["fingerprint"], d)
        return out

    def has_vector_index(self) -> bool:
        if self._items is None:
            return False
        return any("vector" in ix.columns for ix in self._items.list_indices())

    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        where: Callable[[ItemRow], bool] | None = None,
    ) -> list[tuple[ItemRow, float]]:
        """The k items nearest to a unit ``query`` vector (cosine = dot), best first."""
        total = self.count("status = 'ok'")
        if total == 0 or k <= 0:
            return []
        indexed = self.has_vector_index()
        q32 = np.asarray(query, np.float32)
        fetch = min(total, k if where is None else max(4 * k, k + 64))
        while True:
            q = (
                self._items.search(q32, vector_column_name="vector")
                .distance_type("dot")
                .where("status = 'ok'", prefilter=True)
                .select([*ROW_COLUMNS, "_distance"])
                .limit(fetch)
            )
            if indexed:
                q = q.nprobes(NPROBES).ef(max(EF, 2 * fetch)).refine_factor(REFINE_FACTOR)
            res = q.to_arrow()
            scores = 1.0 - res["_distance"].to_numpy()
            rows = [_row(d) for d in res.select(ROW_COLUMNS).to_pylist()]
            order = sorted(range(len(rows)), key=lambda i: (-scores[i], rows[i].id))
            hits = []
            for i in order:
                if where is not None and not where(rows[i]):
                    continue
                hits.append((rows[i], float(scores[i])))
                if len(hits) == k:
                    return hits
            if fetch >= total:
                return hits
            fetch = min(total, fetch * 4)

    # ---- writing (one writer) --------------------------------------------------------
    def _load_next_id(self) -> None:
        if self._next_id is None:
            ids = self.scan_columns(["id"])["id"]
            self._next_id = (max(ids.to_pylist()) + 1) if len(ids) else 1
            self._first_new = self._next_id  # ids from here on are new rows: appended, not merged

    def next_id(self) -> int:
        """A fresh row id (ids are never reused)."""
        self._load_next_id()
        nid = self._next_id
        self._next_id += 1
        return nid

    def write_rows(self, rows: list[dict]) -> None:
        """Insert or replace these rows (keyed by ``id``) in one commit."""
        if not rows:
            return
        import pyarrow as pa

        dim = self.encoder_info().dim
        schema = item_schema(dim)
        n = len(rows)
        flat = np.zeros((n, dim), np.float32)
        mask = np.ones(n, bool)
        for i, r in enumerate(rows):
            v = r.get("vector")
            if v is not None:
                flat[i] = v
                mask[i] = False
        vector = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dim, mask=pa.array(mask))
        now = time.time()
        cols = {name: [r.get(name) for r in rows] for name in ROW_COLUMNS if name != "updated_at"}
        cols["updated_at"] = [now] * n
        table = pa.table({**cols, "vector": vector}, schema=schema)
        self._load_next_id()
        try:
            if min(cols["id"]) < self._first_new:  # replaces rows: merge on id
                (
                    self._items.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(table)
                )
            else:  # only new rows
                self._items.add(table)
        except OSError as exc:
            raise IndexWriteError(
                f"{self.location}: cannot write the index ({exc})",
                hint="free space or fix access and run again: committed batches are kept",
            ) from None

    def delete_ids(self, ids) -> int:
        ids = list(ids)
        for i in range(0, len(ids), 1000):
            self._items.delete(f"id IN ({_in_list(ids[i : i + 1000])})")
        return len(ids)

    def replace_skipped(self, root: bytes, source: str, entries: list[tuple[bytes, str]]) -> None:
        import pyarrow as pa

        if self._skipped is None:
            return
        self._skipped.delete(f"source = '{source.replace(chr(39), chr(39) * 2)}'")
        if entries:
            self._skipped.add(
                pa.table(
                    {
                        "path": [p for p, _ in entries],
                        "source": [source] * len(entries),
                        "reason": [r for _, r in entries],
                    },
                    schema=_skipped_schema(),
                )
            )

    def finish(self, progress=None) -> str:
        """After a run: build the vector index above the threshold, fold new rows in, compact."""
        if self._items is None:
            return "none"
        n = self.count("status = 'ok'")
        action = "none"
        if self.has_vector_index():
            action = "updated"
        elif n >= self.index_threshold:
            from lancedb.index import HnswSq

            self._items.create_index("vector", config=HnswSq(distance_type="dot"))
            action = "built"
        self._items.optimize()  # compaction, and new rows into the vector index
        return action

    # ---- inspection ----------------------------------------------------------------
    def stats(self) -> dict:
        counts: dict[str, int] = {"vectors": 0, "errors": 0, "skipped": 0}
        if self._items is not None:
            ok = self.count("status = 'ok'")
            err = self.count() - ok
            counts.update({"vectors": ok, "errors": err, "image:ok": ok})
            if err:
                counts["image:error"] = err
        if self._skipped is not None:
            counts["skipped"] = self._skipped.count_rows()
        size = None
        if "://" not in self.uri:
            size = sum(p.stat().st_size for p in Path(self.uri).rglob("*") if p.is_file())
        info = self.encoder_info()
        return {
            "path": self.location,
            "backend": "lance",
            "items": counts,
            "bytes_on_disk": size,
            "encoder": encoder_dict(info),
            "pixels": self.pixels_version(),
            "ann": "IVF_HNSW_SQ" if self.has_vector_index() else None,
            "seq": self._items.version if self._items is not None else 0,
        }

    def errors(self) -> Iterator[tuple[str, str]]:
        if self._items is not None:
            t = self.scan_columns(["path", "error"], "status = 'error'")
            for p, e in zip(t["path"].to_pylist(), t["error"].to_pylist(), strict=True):
                yield os.fsdecode(p), e or ""
        if self._skipped is not None:
            t = self._skipped.to_arrow()
            for p, r in sorted(zip(t["path"].to_pylist(), t["reason"].to_pylist(), strict=True)):
                yield os.fsdecode(p), r

    def warnings(self) -> Iterator[tuple[str, str]]:
        if self._items is not None:
            t = self.scan_columns(["path", "error"], "status = 'ok' AND error IS NOT NULL")
            for p, e in zip(t["path"].to_pylist(), t["error"].to_pylist(), strict=True):
                yield os.fsdecode(p), e or ""
