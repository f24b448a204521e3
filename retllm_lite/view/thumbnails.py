"""Small RGB thumbnails of result images, for the HTML gallery and terminal previews.

Decoding goes through ``encode.preprocess.load_image``: EXIF orientation is applied
(a phone photo shows upright) and a JPEG is decoded at a reduced DCT scale when it
is much larger than the thumbnail. Transparent areas become white
(``transparency.flatten_transparency``), as the encoders see them.
"""

from __future__ import annotations

import base64
import io
import os

from PIL import Image

from ..encode.preprocess import ImageLoadError, load_image
from ..transparency import flatten_transparency

__all__ = ["ImageLoadError", "jpeg_data_uri", "make_thumbnail"]


def make_thumbnail(
    source: str | os.PathLike | bytes | Image.Image, max_px: int = 256, name: str | bytes | None = None
) -> Image.Image:
    """An upright RGB copy of ``source`` whose longer side is at most ``max_px``.

    ``name``: the file name of ``source`` bytes (camera RAW files are told apart by it).

    Raises ImageLoadError (one-line reason) for a missing or unreadable image.
    """
    if max_px <= 0:
        raise ValueError(f"max_px must be positive, got {max_px}")
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ImageLoadError("no such file (moved or deleted since indexing?)")
    # draft_factor=1: a JPEG is decoded at the smallest scale whose short side >= max_px,
    # which is always enough for a thumbnail that fits max_px on its long side.
    img = load_image(source, target_size=max_px, draft_factor=1.0, name=name).image
    img = flatten_transparency(img).convert("RGB")
    if max(img.size) > max_px:
        img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return img


def jpeg_data_uri(img: Image.Image, quality: int = 82) -> str:
    """``data:image/jpeg;base64,...`` for embedding an image in a page (transparency: white)."""
    buf = io.BytesIO()
    flatten_transparency(img).convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
