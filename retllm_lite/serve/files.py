"""Reading an indexed photo for the web app, and its disk-cached thumbnails.

A file is only ever reached through its catalog row (looked up by item id), and only
while it is still the file that was indexed: it is opened, ``fstat``-ed and compared
with the catalog's (size, mtime). A photo replaced since indexing (by another file, or by
a symlink pointing anywhere else) is refused until ``retllm index`` sees it again.

Thumbnails are made by ``thumbnails.make_thumbnail`` (EXIF orientation, transparency
onto white, reduced-scale JPEG decoding) from the bytes read here, and kept under
``<cache>/thumbnails`` keyed by the content fingerprint, size, mtime and pixel size, so
the browser's cache and the disk cache agree (the key is also the ETag).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..index.catalog import ItemRow
from ..paths import cache_dir
from ..view.thumbnails import ImageLoadError, make_thumbnail

THUMB_SIZES = (256, 1024)  # grid, larger view
MAX_FILE_BYTES = 512 * 1024 * 1024


class NotServable(Exception):
    """An item whose file cannot be served (status code and one-line reason)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_indexed_file(row: ItemRow) -> bytes:
    """The bytes of an indexed image, if it is still the file that was indexed."""
    if row.path is None or row.status != "ok" or row.modality == "text":
        raise NotServable(404, "this item has no image")
    try:
        fd = os.open(row.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise NotServable(410, "the file is gone since it was indexed (run 'retllm index' again)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            raise NotServable(409, "the file changed since it was indexed (run 'retllm index' again)")
        if st.st_size > MAX_FILE_BYTES:
            raise NotServable(413, "the file is too large to serve")
        return f.read()


@dataclass(frozen=True)
class Thumbnail:
    path: Path
    etag: str


class ThumbnailCache:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or cache_dir() / "thumbnails"

    def key(self, row: ItemRow, px: int) -> str:
        ident = f"{row.fingerprint}:{row.size}:{row.mtime_ns}:{px}:v1"
        return hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()

    def get(self, row: ItemRow, px: int) -> Thumbnail:
        """The JPEG thumbnail of an item (made and cached on first use)."""
        if px not in THUMB_SIZES:
            raise NotServable(400, f"thumbnail size must be one of {', '.join(map(str, THUMB_SIZES))}")
        key = self.key(row, px)
        path = self.directory / key[:2] / f"{key}.jpg"
        if path.is_file():
            return Thumbnail(path, key)
        data = read_indexed_file(row)
        try:
            img = make_thumbnail(data, px, name=row.path)
        except ImageLoadError as exc:
            raise NotServable(422, f"cannot show this image: {exc}") from None
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85 if px <= 256 else 90, optimize=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".thumb-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return Thumbnail(path, key)
