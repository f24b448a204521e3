"""On-disk cache of image embeddings (the projector's output, ready to decode).

Keyed by the image's content fingerprint and the SHA-256 of the mmproj file that made
them: ``<cache>/image-embeddings/<mmproj sha256[:32]>/<key[:2]>/<key>.npz``. An entry holds
one float32 array per image chunk (one for most models; tiled models have several). Writes
go to a temporary file that is renamed into place, so readers never see half an entry; an
unreadable entry is treated as a miss and removed.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from retllm_lite.paths import cache_dir


def default_root() -> Path:
    return cache_dir() / "image-embeddings"


class EmbeddingCache:
    def __init__(self, namespace: str, root: str | Path | None = None):
        if not namespace or os.sep in namespace:
            raise ValueError("namespace must be a plain name (the mmproj sha256)")
        self.dir = Path(root) if root is not None else default_root()
        self.dir = self.dir / namespace[:32]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npz"

    def get(self, key: str) -> list[np.ndarray] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as npz:
                n = int(npz["n_chunks"])
                arrays = [np.ascontiguousarray(npz[f"c{i}"], dtype=np.float32) for i in range(n)]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            p.unlink(missing_ok=True)
            return None
        return arrays

    def put(self, key: str, arrays: list[np.ndarray]) -> None:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = {f"c{i}": np.asarray(a, dtype=np.float32) for i, a in enumerate(arrays)}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, n_chunks=np.int64(len(arrays)), **payload)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
