"""On-disk cache of image embeddings (the projector's output, ready to decode).

``<cache>/image-embeddings/<namespace>/<key[:2]>/<key>-<layout>.npz``:

* ``namespace`` (``cache_namespace``): the mmproj file's SHA-256 (first 16 hex digits,
  readable) and a digest of everything else that decides what the projector returns for a
  picture: the cache format, the llama.cpp/mtmd build (llama-cpp-python version and the
  libmtmd binary's hash), the image-token budget (min/max tokens per image) and vision
  flash attention. Another projector, a llama.cpp upgrade or another ``--max-image-tokens``
  never reads these entries.
* ``key``: the content fingerprint of the decoded image (a re-saved copy hits).
* ``layout``: a digest of the image's chunk layout as mtmd tokenises it (per image chunk:
  token count and token grid). An entry also stores the layout and is only a hit when
  it equals the tokenised chunks and every array has their shape (``n_tokens`` x
  ``n_embd``); anything else is a miss, and the entry is removed.

One float32 array per image chunk (one for most models; tiled models such as SmolVLM have
several). Writes go to a temporary file renamed into place, so readers never see half an
entry; an unreadable entry is a miss and is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retllm_lite.paths import cache_dir

FORMAT = 2  # 1: keyed by the mmproj sha256 only, no layout
Layout = tuple[tuple[int, int, int], ...]  # per image chunk: (n_tokens, nx, ny)


def default_root() -> Path:
    return cache_dir() / "image-embeddings"


def cache_namespace(mmproj_sha256: str, settings: Mapping[str, Any]) -> str:
    """The directory name for one projector file under one runtime configuration."""
    blob = json.dumps({"format": FORMAT, **settings}, sort_keys=True).encode()
    return f"{mmproj_sha256[:16]}-{hashlib.blake2b(blob, digest_size=8).hexdigest()}"


def layout_digest(layout: Layout) -> str:
    return hashlib.blake2b(json.dumps(list(layout)).encode(), digest_size=6).hexdigest()


class EmbeddingCache:
    def __init__(self, namespace: str, root: str | Path | None = None):
        if not namespace or os.sep in namespace:
            raise ValueError("namespace must be a plain name (see cache_namespace)")
        self.dir = (Path(root) if root is not None else default_root()) / namespace

    def path(self, key: str, layout: Layout) -> Path:
        return self.dir / key[:2] / f"{key}-{layout_digest(layout)}.npz"

    def get(self, key: str, layout: Layout, n_embd: int) -> list[np.ndarray] | None:
        """The arrays for ``key`` if they fit ``layout`` exactly (else None, entry removed)."""
        p = self.path(key, layout)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as npz:
                stored = tuple(tuple(int(v) for v in row) for row in npz["layout"])
                n = int(npz["n_chunks"])
                arrays = [np.ascontiguousarray(npz[f"c{i}"], dtype=np.float32) for i in range(n)]
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
            p.unlink(missing_ok=True)
            return None
        shapes = [(row[0], n_embd) for row in layout]
        if stored != tuple(layout) or [a.shape for a in arrays] != shapes:
            p.unlink(missing_ok=True)
            return None
        return arrays

    def put(self, key: str, layout: Layout, arrays: Sequence[np.ndarray]) -> None:
        if len(arrays) != len(layout):
            raise ValueError("one array per image chunk")
        p = self.path(key, layout)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = {f"c{i}": np.asarray(a, dtype=np.float32) for i, a in enumerate(arrays)}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    n_chunks=np.int64(len(arrays)),
                    layout=np.asarray(layout, dtype=np.int64).reshape(len(layout), 3),
                    **payload,
                )
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
