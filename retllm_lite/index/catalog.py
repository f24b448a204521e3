"""The catalog: one SQLite database holding every item, its state and its vector.

SQLite is the source of truth. A batch of embeddings and the rows that describe them
are committed in one transaction, so a crash (even SIGKILL) loses at most the batch in
flight and never leaves a vector without its row or a row pointing at no vector.
The ANN file next to the catalog is a derived snapshot (see ``vectors.py``).

Each committed change gets a sequence number: rows record the ``vec_seq`` at which
their vector was written and deletions leave a tombstone in ``removed``, so a reader
holding an older ANN snapshot can bring it up to date from the catalog alone.

Paths are stored as raw file-system bytes (BLOB), so names that are not valid UTF-8
round-trip exactly.

Schema 2 added each photo's capture time and camera (``taken``, ``taken_source``,
``camera``; see ``capture.py``). The migration only adds the columns (instant, at any
size): the rows of a schema-1 index have ``taken_source`` NULL, meaning "not read yet",
and are dated from their mtime until the next ``retllm index`` over their folder reads
their EXIF (``capture.backfill``; no re-embedding). A schema-1 catalog opened read-only (a
search before that run) reads as if those columns were NULL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexCorrupt, IndexNotFound, IndexWriteError

SCHEMA_VERSION = 2
CATALOG_NAME = "catalog.sqlite3"


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # not executescript(): it would COMMIT the surrounding migration transaction first
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_1(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- also the vector's label (never reused)
            key BLOB NOT NULL UNIQUE,     -- image: absolute path bytes, others: b'item:' source#id
            modality TEXT NOT NULL,       -- 'image' | 'text' | 'image+text'
            path BLOB,                    -- image file, raw bytes (NULL for text items)
            source TEXT NOT NULL,         -- folder or collection file it was indexed from
            item_id TEXT,                 -- caller's id for text and image+text items
            text TEXT,
            size INTEGER,
            mtime_ns INTEGER,
            fingerprint TEXT,             -- BLAKE2b-128 of the content
            width INTEGER,
            height INTEGER,
            status TEXT NOT NULL,         -- 'ok' | 'error'
            error TEXT,                   -- one-line reason when status = 'error'
            vector_label INTEGER,         -- = id when a vector is stored, else NULL
            vec_seq INTEGER,              -- change sequence that wrote the vector
            updated_at REAL NOT NULL
        );
        CREATE INDEX items_fingerprint ON items(fingerprint);
        CREATE INDEX items_vec_seq ON items(vec_seq);
        CREATE INDEX items_source ON items(source);
        CREATE TABLE vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
        CREATE TABLE removed (id INTEGER NOT NULL, seq INTEGER NOT NULL);
        CREATE INDEX removed_seq ON removed(seq);
        -- paths met while scanning that are not items: unreadable folders, loops, vanished files
        CREATE TABLE skipped (
            path BLOB PRIMARY KEY,
            source TEXT NOT NULL,
            reason TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    )


def _migrate_2(db: sqlite3.Connection) -> None:
    # capture time and camera (capture.py); NULL taken_source: not read yet (schema-1 rows)
    _run_script(
        db,
        """
        ALTER TABLE items ADD COLUMN taken TEXT;         -- EXIF capture time, camera-local ISO
        ALTER TABLE items ADD COLUMN taken_source TEXT;  -- 'exif' | 'mtime' | NULL (not read yet)
        ALTER TABLE items ADD COLUMN camera TEXT;        -- EXIF make and model
        """,
    )


MIGRATIONS = [_migrate_1, _migrate_2]  # index i upgrades schema i -> i + 1; forward only
# columns each schema version added to items, for reading an older catalog read-only
_ADDED_COLUMNS = {2: ("taken", "taken_source", "camera")}


@dataclass
class ItemRow:
    id: int
    key: bytes
    modality: str
    path: bytes | None
    source: str
    item_id: str | None
    text: str | None
    size: int | None
    mtime_ns: int | None
    fingerprint: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None  # status 'error': why; status 'ok': what the decoder warned about, if anything
    vector_label: int | None
    vec_seq: int | None
    updated_at: float
    taken: str | None = None  # schema 2: EXIF capture time ("YYYY-MM-DDTHH:MM:SS", camera-local)
    taken_source: str | None = None  # "exif" | "mtime" | None (not read yet)
    camera: str | None = None

    @property
    def fs_path(self) -> Path | None:
        return Path(os.fsdecode(self.path)) if self.path is not None else None


_COLUMNS = ", ".join(ItemRow.__dataclass_fields__)


class Catalog:
    """Thin typed access to the catalog database."""

    def __init__(self, db: sqlite3.Connection, path: Path, readonly: bool):
        self.db = db
        self.path = path
        self.readonly = readonly
        self._select = _COLUMNS

    # ---- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, readonly: bool = False, create: bool = False) -> Catalog:
        path = directory / CATALOG_NAME
        try:
            if readonly and os.access(directory, os.W_OK) and os.access(path, os.W_OK):
                # A read-write handle that refuses writes (query_only): unlike mode=ro it
                # cleans up SQLite's -wal/-shm side files when it closes.
                db = sqlite3.connect(path, timeout=30, isolation_level=None)
                db.execute("PRAGMA query_only=ON")
            elif readonly:
                try:
                    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
                    db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                except sqlite3.OperationalError:
                    # A read-only folder cannot hold WAL side files: read the file as is.
                    db = sqlite3.connect(
                        f"file:{path}?mode=ro&immutable=1", uri=True, timeout=30, isolation_level=None
                    )
            else:
                if not create and not path.exists():
                    raise IndexCorrupt(f"{path}: catalog missing")
                db = sqlite3.connect(path, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            cat = cls(db, path, readonly)
            cat._migrate(create)
            return cat
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not readonly:
                raise cls._write_error(path, exc) from None
            raise IndexCorrupt(
                f"{path}: cannot read the catalog ({exc})",
                hint="restore it from a backup or delete the index folder and re-index",
            ) from None

    def _migrate(self, create: bool) -> None:
        has_meta = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        version = 0
        if has_meta:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise IndexCorrupt(
                f"{self.path}: catalog schema {version} is newer than this retllm-lite ({SCHEMA_VERSION})",
                hint="upgrade retllm-lite",
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly and version >= 1:
            # an older catalog read as it is: the columns added since read as NULL
            missing = {c for v in range(version + 1, SCHEMA_VERSION + 1) for c in _ADDED_COLUMNS.get(v, ())}
            self._select = ", ".join(
                f"NULL AS {c}" if c in missing else c for c in ItemRow.__dataclass_fields__
            )
            return
        if self.readonly:
            raise IndexNotFound(
                f"{self.path.parent}: the index is empty (being created, or its creation was interrupted)",
                hint="run 'retllm index FOLDER' to build it",
            )
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for step in MIGRATIONS[version:]:
                step(self.db)
            self.set_meta("schema_version", str(SCHEMA_VERSION))
            if version == 0:
                self.set_meta("seq", "0")
                self.set_meta("created_at", str(time.time()))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Several reads that must see one consistent state (a writer may commit meanwhile)."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    @staticmethod
    def _write_error(path: Path, exc: Exception) -> IndexWriteError:
        msg = str(exc)
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            hint = "the index folder is read-only; searches still work, or pass --index PATH elsewhere"
        elif "full" in msg:
            hint = "the disk is full; free space and run again: finished work is kept"
        else:
            hint = "nothing was lost; fix the cause and run again"
        return IndexWriteError(f"{path}: cannot write the index ({msg})", hint=hint)

    def write_error(self, exc: Exception) -> IndexWriteError:
        return self._write_error(self.path, exc)

    # ---- meta ----------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    @property
    def seq(self) -> int:
        return int(self.get_meta("seq", "0"))

    def next_seq(self) -> int:
        """Inside a write transaction: claim the next change sequence number."""
        seq = self.seq + 1
        self.set_meta("seq", str(seq))
        return seq

    # ---- reading -------------------------------------------------------------------
    def _rows(self, sql: str, params: Sequence = ()) -> Iterator[ItemRow]:
        for r in self.db.execute(sql, params):
            yield ItemRow(*r)

    def get(self, item_id: int) -> ItemRow | None:
        return next(self._rows(f"SELECT {self._select} FROM items WHERE id=?", (item_id,)), None)

    def get_many(self, ids: Iterable[int]) -> dict[int, ItemRow]:
        ids = list(ids)
        out: dict[int, ItemRow] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._rows(f"SELECT {self._select} FROM items WHERE id IN ({marks})", chunk):
                out[row.id] = row
        return out

    def by_key(self, key: bytes) -> ItemRow | None:
        return next(self._rows(f"SELECT {self._select} FROM items WHERE key=?", (key,)), None)

    def items_under(self, root: bytes) -> Iterator[ItemRow]:
        """Image files indexed from folders, inside ``root`` (raw bytes, no trailing slash).

        Collection items that point at an image there are not included: their key is not their path.
        """
        prefix = root.rstrip(b"/") + b"/"
        yield from self._rows(
            f"SELECT {self._select} FROM items WHERE key = path AND substr(path, 1, ?) = ?",
            (len(prefix), prefix),
        )

    def items_from_source(self, source: str) -> Iterator[ItemRow]:
        """Items of a collection file (keys b'item:...'; folder images are keyed by their path)."""
        yield from self._rows(
            f"SELECT {self._select} FROM items WHERE source=? AND substr(key, 1, 5) = ?", (source, b"item:")
        )

    def all_items(self, status: str | None = None) -> Iterator[ItemRow]:
        if status:
            yield from self._rows(f"SELECT {self._select} FROM items WHERE status=? ORDER BY id", (status,))
        else:
            yield from self._rows(f"SELECT {self._select} FROM items ORDER BY id")

    def warned_items(self) -> Iterator[ItemRow]:
        """Indexed items whose decoder warned (the warning is in ``error``)."""
        yield from self._rows(
            f"SELECT {self._select} FROM items WHERE status='ok' AND error IS NOT NULL ORDER BY id"
        )

    def vector_for_fingerprint(self, fingerprint: str, modality: str) -> tuple[int, bytes] | None:
        """(item id, vector bytes) of an embedded item with this content, if any."""
        return self.db.execute(
            "SELECT items.id, vectors.vec FROM items JOIN vectors ON vectors.id = items.id "
            "WHERE items.fingerprint=? AND items.modality=? AND items.status='ok' LIMIT 1",
            (fingerprint, modality),
        ).fetchone()

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT modality, status, COUNT(*) FROM items GROUP BY modality, status")
        out: dict[str, int] = {"vectors": 0, "errors": 0, "skipped": 0}
        for modality, status, n in rows:
            out[f"{modality}:{status}"] = n
            if status == "ok":
                out["vectors"] += n
            else:
                out["errors"] += n
        out["skipped"] = self.db.execute("SELECT COUNT(*) FROM skipped").fetchone()[0]
        return out

    def vector_count(self) -> int:
        """Rows of the vectors table (reads every page of it: slow at 1M, use ``searchable_count``)."""
        return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def searchable_count(self) -> int:
        """Items with a stored vector, counted on the ``vec_seq`` index (the vectors table is not read).

        ``vec_seq`` is set exactly when a vector row is written and cleared when it is dropped,
        so this equals ``vector_count()``; at 1M vectors it takes milliseconds, not seconds.
        """
        return self.db.execute("SELECT COUNT(*) FROM items WHERE vec_seq IS NOT NULL").fetchone()[0]

    def iter_vectors(self, dim: int, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All vectors as (labels, float32 vectors) chunks in id order, ``chunk`` rows at a time.

        Memory stays at one chunk (a full load of 1M x 512 would hold 2 GB twice over).
        """
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT id, vec FROM vectors WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)
            ).fetchall()
            if not rows:
                return
            labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            if vecs.shape[1] != dim:
                raise IndexCorrupt(f"{self.path}: stored vectors have {vecs.shape[1]} dims, expected {dim}")
            yield labels, vecs
            last = int(labels[-1])

    def load_vectors(self, dim: int, since_seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64 [n], vectors float32 [n, dim]) of all vectors, or those written after a seq."""
        if since_seq is None:
            cur = self.db.execute("SELECT id, vec FROM vectors ORDER BY id")
        else:
            # from the vec_seq index outwards: a plain JOIN ... ORDER BY vectors.id made SQLite
            # scan the whole vectors table (0.9 s at 100k vectors for no new row, 4 GB at 1M)
            cur = self.db.execute(
                "SELECT items.id, vectors.vec FROM items INDEXED BY items_vec_seq "
                "CROSS JOIN vectors ON vectors.id = items.id WHERE items.vec_seq > ?",
                (since_seq,),
            )
        rows = sorted(cur.fetchall()) if since_seq is not None else cur.fetchall()
        labels = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return labels, np.zeros((0, dim), np.float32)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        if vecs.shape[1] != dim:
            raise IndexCorrupt(f"{self.path}: stored vectors have {vecs.shape[1]} dims, expected {dim}")
        return labels, vecs

    def removed_since(self, seq: int) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM removed WHERE seq > ?", (seq,)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def skipped(self) -> list[tuple[bytes, str, str]]:
        return self.db.execute("SELECT path, source, reason FROM skipped ORDER BY path").fetchall()

    # ---- writing (call inside ``with catalog.transaction()``) -----------------------
    def transaction(self, bump: bool = True):
        """``with catalog.transaction() as seq:`` one atomic change (bump=False: meta only)."""
        return _Transaction(self, bump)

    def upsert_item(self, seq: int, vector: np.ndarray | bytes | None, **fields) -> int:
        """Insert or update the item with ``fields['key']``; store its vector (or drop it)."""
        now = time.time()
        existing = self.by_key(fields["key"])
        has_vec = vector is not None
        fields.setdefault("error", None)
        fields["updated_at"] = now
        if existing is None:
            cols = ", ".join(fields)
            marks = ", ".join("?" * len(fields))
            cur = self.db.execute(f"INSERT INTO items ({cols}) VALUES ({marks})", tuple(fields.values()))
            item_id = int(cur.lastrowid)
        else:
            item_id = existing.id
            sets = ", ".join(f"{k}=?" for k in fields)
            self.db.execute(f"UPDATE items SET {sets} WHERE id=?", (*fields.values(), item_id))
        if has_vec:
            blob = vector if isinstance(vector, bytes) else np.asarray(vector, np.float32).tobytes()
            self.db.execute("INSERT OR REPLACE INTO vectors(id, vec) VALUES(?, ?)", (item_id, blob))
            self.db.execute("UPDATE items SET vector_label=?, vec_seq=? WHERE id=?", (item_id, seq, item_id))
        elif existing is not None and existing.vector_label is not None:
            self._drop_vector(item_id, seq)
        return item_id

    def set_capture(self, item_id: int, taken: str | None, source: str, camera: str | None) -> None:
        """Record a photo's capture time and camera (its content and vector unchanged)."""
        self.db.execute(
            "UPDATE items SET taken=?, taken_source=?, camera=? WHERE id=?", (taken, source, camera, item_id)
        )

    def undated_under(self, root: bytes) -> Iterator[ItemRow]:
        """Indexed images under ``root`` (or that file) whose capture time was never read."""
        prefix = root.rstrip(b"/") + b"/"
        yield from self._rows(
            f"SELECT {self._select} FROM items WHERE taken_source IS NULL AND status='ok' "
            "AND modality='image' AND key = path AND (path = ? OR substr(path, 1, ?) = ?)",
            (root, len(prefix), prefix),
        )

    def replace_vector(self, item_id: int, seq: int, vector: np.ndarray) -> None:
        """A new vector for an item whose content did not change (the way pixels are made did)."""
        blob = np.asarray(vector, np.float32).tobytes()
        self.db.execute("INSERT OR REPLACE INTO vectors(id, vec) VALUES(?, ?)", (item_id, blob))
        self.db.execute(
            "UPDATE items SET vector_label=?, vec_seq=?, updated_at=? WHERE id=?",
            (item_id, seq, time.time(), item_id),
        )

    def move_item(
        self, item_id: int, new_key: bytes, new_path: bytes, source: str, size: int, mtime_ns: int
    ) -> None:
        """A file that moved: same content, same vector, new path (no re-embedding)."""
        self.db.execute(
            "UPDATE items SET key=?, path=?, source=?, size=?, mtime_ns=?, updated_at=? WHERE id=?",
            (new_key, new_path, source, size, mtime_ns, time.time(), item_id),
        )

    def _drop_vector(self, item_id: int, seq: int) -> None:
        self.db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
        self.db.execute("UPDATE items SET vector_label=NULL, vec_seq=NULL WHERE id=?", (item_id,))
        self.db.execute("INSERT INTO removed(id, seq) VALUES(?, ?)", (item_id, seq))

    def delete_items(self, ids: Iterable[int], seq: int) -> int:
        n = 0
        for item_id in ids:
            self.db.execute("DELETE FROM vectors WHERE id=?", (item_id,))
            self.db.execute("DELETE FROM items WHERE id=?", (item_id,))
            self.db.execute("INSERT INTO removed(id, seq) VALUES(?, ?)", (item_id, seq))
            n += 1
        return n

    def prune_removed(self, upto_seq: int) -> None:
        self.db.execute("DELETE FROM removed WHERE seq <= ?", (upto_seq,))

    def replace_skipped_for_source(self, source: str, entries: Iterable[tuple[bytes, str]]) -> None:
        """Skipped entries of a collection file (its lines), replacing the previous run's."""
        self.db.execute("DELETE FROM skipped WHERE source = ?", (source,))
        now = time.time()
        self.db.executemany(
            "INSERT OR REPLACE INTO skipped(path, source, reason, updated_at) VALUES(?, ?, ?, ?)",
            [(p, source, reason, now) for p, reason in entries],
        )

    def replace_skipped(self, root: bytes, source: str, entries: Iterable[tuple[bytes, str]]) -> None:
        prefix = root.rstrip(b"/") + b"/"
        self.db.execute(
            "DELETE FROM skipped WHERE path = ? OR substr(path, 1, ?) = ?", (root, len(prefix), prefix)
        )
        now = time.time()
        self.db.executemany(
            "INSERT OR REPLACE INTO skipped(path, source, reason, updated_at) VALUES(?, ?, ?, ?)",
            [(p, source, reason, now) for p, reason in entries],
        )


class _Transaction:
    """``with catalog.transaction() as seq:`` one atomic change with its sequence number."""

    def __init__(self, catalog: Catalog, bump: bool):
        self.catalog = catalog
        self.bump = bump

    def __enter__(self) -> int:
        db = self.catalog.db
        try:
            db.execute("BEGIN IMMEDIATE")
            return self.catalog.next_seq() if self.bump else self.catalog.seq
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise self.catalog.write_error(exc) from None

    def __exit__(self, exc_type, exc, tb) -> bool:
        db = self.catalog.db
        if exc_type is None:
            try:
                db.execute("COMMIT")
            except sqlite3.OperationalError as err:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise self.catalog.write_error(err) from None
        else:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise self.catalog.write_error(exc) from None
        return False
