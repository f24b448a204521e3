"""Saved KV states of prompt heads that do not depend on the query (text -> image reuse).

With the authors' prompt order a text -> image prompt starts with the chat header and the
candidate's image; only what follows depends on the query. The llama.cpp state of one
sequence after that head (``llama_state_seq_get_data``: its cells' K/V and positions) is
kept here, keyed by everything that decides it (model, projector, runtime build, the head's
tokens and image keys). A later query restores it (``llama_state_seq_set_data``) and
decodes only its own text, so each candidate image is decoded once per model, not once
per query.

In memory (an LRU under ``memory_mb``) and, optionally, on disk under the cache dir
(``<cache>/rerank-states/<namespace>/``, one file a state, oldest files evicted past
``disk_mb``). A state that fails to restore (a file from another build, a truncated write)
is a miss and is dropped. Writes go through a temporary file and a rename.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from retllm_lite.paths import cache_dir

_MAGIC = b"RLKV1"


def head_key(parts: list[Any]) -> str:
    """A stable key for a prompt head: its runs' keys (token tuples, image keys)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:40]


class StateCache:
    """KV states by head key: ``get(key) -> (state bytes, end position) | None``, ``put``."""

    def __init__(
        self,
        namespace: str,
        *,
        memory_mb: float = 1024.0,
        disk_mb: float | None = 4096.0,
        root: str | Path | None = None,
    ):
        self.namespace = namespace
        self._memory: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._memory_cap = int(memory_mb * 1024 * 1024)
        self._memory_bytes = 0
        self._disk_cap = None if disk_mb is None else int(disk_mb * 1024 * 1024)
        self.dir: Path | None = None
        if disk_mb:
            self.dir = Path(root) if root is not None else cache_dir() / "rerank-states" / namespace
            self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def get(self, key: str) -> tuple[bytes, int] | None:
        got = self._memory.get(key)
        if got is not None:
            self._memory.move_to_end(key)
            self.hits += 1
            return got
        if self.dir is not None:
            path = self.dir / f"{key}.kv"
            try:
                raw = path.read_bytes()
            except OSError:
                raw = b""
            if raw.startswith(_MAGIC) and len(raw) > len(_MAGIC) + 8:
                (end,) = struct.unpack_from("<q", raw, len(_MAGIC))
                data = raw[len(_MAGIC) + 8 :]
                os.utime(path)  # LRU on disk by modification time
                self._remember(key, data, end)
                self.hits += 1
                return data, end
        self.misses += 1
        return None

    def put(self, key: str, data: bytes, end: int) -> None:
        self._remember(key, data, end)
        if self.dir is None:
            return
        fd, tmp = tempfile.mkstemp(prefix=".kv-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + struct.pack("<q", end) + data)
            os.replace(tmp, self.dir / f"{key}.kv")
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            return
        self._trim_disk()

    def drop(self, key: str) -> None:
        """Forget a state that did not restore."""
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= len(old[0])
        if self.dir is not None:
            (self.dir / f"{key}.kv").unlink(missing_ok=True)

    def _remember(self, key: str, data: bytes, end: int) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= len(old[0])
        self._memory[key] = (data, end)
        self._memory_bytes += len(data)
        while self._memory_bytes > self._memory_cap and len(self._memory) > 1:
            _, (gone, _) = self._memory.popitem(last=False)
            self._memory_bytes -= len(gone)

    def _trim_disk(self) -> None:
        if self.dir is None or self._disk_cap is None:
            return
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.dir.glob("*.kv")]
        total = sum(s for _, s, _ in files)
        for _, size, path in sorted(files):
            if total <= self._disk_cap:
                break
            path.unlink(missing_ok=True)
            total -= size
