"""Bring an index built before ``transparency.PIXELS_VERSION`` up to date.

Until images with transparency were composited onto white (``transparency.py``), they were
embedded with their alpha channel dropped, and many looked alike to CLIP. An index whose meta
has no ``encoder.pixels`` may hold such vectors. ``refresh_pixels`` checks every embedded image
cheaply (PIL reads the header only: an alpha band or a transparency entry; opaque files are
never decoded), decodes those that may be transparent, re-embeds the ones that really have
transparent pixels, and only then records the version.

The indexer runs it after its scan, when every file under the folders just indexed matches
its row (a file only touched keeps its vector, so it is checked here too). Each batch of new
vectors is committed in one transaction; rows keep their label, so readers and the ANN
snapshot pick the new vectors up like any update. Interrupted, the version is not recorded
and the next run checks again (re-embedding gives the same vectors): the index is never
corrupted. Nor are old and new vectors left mixed without the index saying so: while some
file cannot be checked (gone, changed or unreadable, in a folder not indexed in this run),
the version is not recorded either, and the next run checks again.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..encode.base import PixelEncoder, normalize
from ..pil_warnings import recorded
from ..transparency import PIXELS_VERSION, has_transparent_pixels, may_have_transparency
from .store import Index


@dataclass(frozen=True)
class _Candidate:
    id: int
    path: bytes
    size: int | None
    mtime_ns: int | None
    text: str | None  # image+text items: their text (the vector fuses both)


_UNCHECKED = "unchecked"  # gone, changed or unreadable: its vector may be old


def _check(encoder: PixelEncoder, item: _Candidate) -> np.ndarray | str | None:
    """Preprocessed pixels if the file has transparent pixels; None if its vector stands."""
    try:
        with open(item.path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
                return _UNCHECKED  # changed since indexed, in a folder not indexed now
            with recorded(), Image.open(f) as header:  # the header only, no pixel data yet
                if not may_have_transparency(header):
                    return None
            f.seek(0)
            data = f.read()
    except OSError:
        return _UNCHECKED
    try:
        with recorded():
            loaded = encoder.load_image(data)
            if not has_transparent_pixels(loaded.image):
                return None  # an alpha band, but every pixel opaque: its vector is unchanged
            return encoder.preprocess(loaded.image)
    except Exception:  # undecodable now (or a decoder bug): nothing better to store
        return None


def refresh_pixels(
    index: Index,
    encoder: PixelEncoder,
    item_image_weight: float,
    batch_size: int = 32,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    committed: Callable[[int], None] | None = None,
) -> int:
    """Re-embed the transparent images of an index made before PIXELS_VERSION, then record it.

    Returns how many files could not be checked (then the version is not recorded).
    Nothing to do when the index records the current version. ``committed(n)`` is called
    after each batch of n re-embedded items is durable; ``progress(done, total)`` as files
    are checked.
    """
    if index.pixels_version() == PIXELS_VERSION:
        return 0
    cat = index.catalog
    items = [
        _Candidate(*r)
        for r in cat.db.execute(
            "SELECT id, path, size, mtime_ns, text FROM items "
            "WHERE status='ok' AND path IS NOT NULL AND vector_label IS NOT NULL ORDER BY id"
        )
    ]
    done = unchecked = 0
    pending: list[tuple[_Candidate, np.ndarray]] = []

    def commit() -> None:
        nonlocal pending
        if not pending:
            return
        vecs = encoder.embed_pixels(np.stack([px for _, px in pending]))
        texts = [it.text for it, _ in pending if it.text is not None]
        text_vecs = iter(encoder.embed_texts(texts)) if texts else iter(())
        w = item_image_weight
        with cat.transaction() as seq:
            for (it, _), vec in zip(pending, vecs, strict=True):
                if it.text is not None:  # an image+text item: normalize(w * image + (1 - w) * text)
                    vec = normalize(w * vec + (1.0 - w) * next(text_vecs))
                cat.replace_vector(it.id, seq, vec)
        if committed:
            committed(len(pending))
        pending = []

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retllm-pixels")
    queue: collections.deque[tuple[_Candidate, Future]] = collections.deque()
    it = iter(items)
    try:
        while True:
            while len(queue) < 2 * batch_size + workers:
                item = next(it, None)
                if item is None:
                    break
                queue.append((item, pool.submit(_check, encoder, item)))
            if not queue:
                break
            item, fut = queue.popleft()
            found = fut.result()
            done += 1
            if isinstance(found, np.ndarray):
                pending.append((item, found))
            elif found == _UNCHECKED:
                unchecked += 1
            if len(pending) >= batch_size:
                commit()
            if progress and (done % batch_size == 0 or done == len(items)):
                progress(done, len(items))
        commit()
    finally:
        for _, fut in queue:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    if unchecked == 0:
        index.set_pixels_version()
    return unchecked
