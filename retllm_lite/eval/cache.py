"""What ``retllm eval`` keeps between runs, in one SQLite file (``<cache>/eval/cache.sqlite3``).

* CLIP vectors, per image (content fingerprint and ``transparency.PIXELS_VERSION``, the
  way files become pixels) or caption (text hash) and encoder (``EncoderInfo.key``): a
  re-run embeds nothing it has embedded before, and each item's vector is the one it got
  the first time (int8 towers depend a little on batch neighbours), so re-runs rank the
  same. Image keys also key the VLM scores below.
* VLM pair scores (P(True), P(False), entropy) per (namespace, query, candidate), the
  namespace naming the model and projector (sha256), the prompt and the pass (plain or
  with the image inserted again): another configuration reuses every score it shares.
* Listwise picks per (namespace, image, the ordered candidate captions).

Every write is one transaction (atomic); the file is only a cache: one this version cannot
read is replaced.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from retllm_lite.errors import BadInput
from retllm_lite.hashing import fingerprint_bytes
from retllm_lite.paths import cache_dir
from retllm_lite.rerank.logits import ChoiceProbs
from retllm_lite.rerank.pairs import PassScores
from retllm_lite.transparency import PIXELS_VERSION

SCHEMA_VERSION = 2  # 2: pair_scores.vocab_entropy
_CHUNK = 500  # keys per IN (...) query, below SQLite's variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clip_vectors (
    encoder TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (encoder, kind, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pair_scores (
    namespace TEXT NOT NULL, query TEXT NOT NULL, candidate TEXT NOT NULL,
    p_true REAL NOT NULL, p_false REAL NOT NULL, entropy REAL NOT NULL, vocab_entropy REAL NOT NULL,
    PRIMARY KEY (namespace, query, candidate)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS listwise_picks (
    namespace TEXT NOT NULL, query TEXT NOT NULL, candidates TEXT NOT NULL,
    pick INTEGER NOT NULL, probs TEXT NOT NULL, mass REAL NOT NULL, entropy REAL NOT NULL,
    PRIMARY KEY (namespace, query, candidates)) WITHOUT ROWID;
"""


def default_path() -> Path:
    return cache_dir() / "eval" / "cache.sqlite3"


def text_key(text: str) -> str:
    return "t:" + fingerprint_bytes(text.encode("utf-8", "surrogatepass"))


def image_key(fingerprint: str) -> str:
    """An image's key for vectors and VLM scores: its content, and how it became pixels."""
    return f"i:{PIXELS_VERSION}:{fingerprint}"


class EvalCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = self._open()
        except (OSError, sqlite3.Error) as exc:
            raise BadInput(
                f"cannot open the eval cache {self.path} ({exc})",
                hint="set RETLLM_CACHE_DIR to a writable folder",
            ) from None

    def _open(self) -> sqlite3.Connection:
        for attempt in (0, 1):
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    db.executescript(
                        "DROP TABLE IF EXISTS clip_vectors; DROP TABLE IF EXISTS pair_scores;"
                        " DROP TABLE IF EXISTS listwise_picks;"
                    )
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                return db
            except sqlite3.DatabaseError:
                db.close()
                if attempt:
                    raise
                for suffix in ("", "-wal", "-shm"):  # not a database: it is only a cache
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EvalCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise BadInput(
                f"cannot write the eval cache {self.path} ({exc})",
                hint="free disk space or set RETLLM_CACHE_DIR to a writable folder",
            ) from None

    def _select(self, sql: str, fixed: tuple, keys: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        unique = list(dict.fromkeys(keys))
        for a in range(0, len(unique), _CHUNK):
            part = unique[a : a + _CHUNK]
            marks = ",".join("?" * len(part))
            rows += self.db.execute(sql.format(marks=marks), (*fixed, *part)).fetchall()
        return rows

    # -- CLIP vectors ---------------------------------------------------------------------

    def vectors(self, encoder: str, kind: str, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        rows = self._select(
            "SELECT key, vector FROM clip_vectors WHERE encoder=? AND kind=? AND key IN ({marks})",
            (encoder, kind),
            keys,
        )
        out = {}
        for key, blob in rows:
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.size == dim:
                out[key] = vec
        return out

    def put_vectors(self, encoder: str, kind: str, items: dict[str, np.ndarray]) -> None:
        self._write(
            "INSERT OR REPLACE INTO clip_vectors VALUES (?, ?, ?, ?)",
            ((encoder, kind, k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items.items()),
        )

    # -- VLM pair scores ------------------------------------------------------------------

    def pair_scores(self, namespace: str, query: str, candidates: Sequence[str]) -> dict[str, PassScores]:
        rows = self._select(
            "SELECT candidate, p_true, p_false, entropy, vocab_entropy FROM pair_scores"
            " WHERE namespace=? AND query=? AND candidate IN ({marks})",
            (namespace, query),
            candidates,
        )
        return {c: PassScores(t, f, e, v) for c, t, f, e, v in rows}

    def put_pair_scores(self, namespace: str, query: str, scores: dict[str, PassScores]) -> None:
        self._write(
            "INSERT OR REPLACE INTO pair_scores VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (namespace, query, c, s.p_true, s.p_false, s.entropy, s.vocab_entropy)
                for c, s in scores.items()
            ),
        )

    # -- listwise picks -------------------------------------------------------------------

    def pick(self, namespace: str, query: str, candidates: Sequence[str]) -> ChoiceProbs | None:
        row = self.db.execute(
            "SELECT pick, probs, mass, entropy FROM listwise_picks"
            " WHERE namespace=? AND query=? AND candidates=?",
            (namespace, query, "\n".join(candidates)),
        ).fetchone()
        if row is None:
            return None
        probs = tuple(float(p) for p in row[1].split(",")) if row[1] else ()
        if len(probs) != len(candidates) or not 0 <= row[0] < len(candidates):
            return None
        return ChoiceProbs(int(row[0]), probs, float(row[2]), float(row[3]))

    def put_pick(self, namespace: str, query: str, candidates: Sequence[str], pick: ChoiceProbs) -> None:
        self._write(
            "INSERT OR REPLACE INTO listwise_picks VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    namespace,
                    query,
                    "\n".join(candidates),
                    pick.index,
                    ",".join(repr(p) for p in pick.probs),
                    pick.mass,
                    pick.entropy,
                )
            ],
        )
