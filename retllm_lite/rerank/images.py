"""Decode images for the VLM: PIL, EXIF orientation applied, transparency composited onto
white (``transparency.py``, as for CLIP), RGB, raw bytes.

llama.cpp gets raw RGB (``mtmd_bitmap_init``), never a file to decode itself, so every
format PIL reads works and a phone photo is seen upright. The content key fingerprints the
decoded pixels, so the same picture saved twice shares its cached embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from retllm_lite.errors import BadInput
from retllm_lite.hashing import fingerprint_bytes

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageInput = Union[str, "os.PathLike[str]", "PILImage"]


@dataclass(frozen=True, eq=False)
class RGBImage:
    width: int
    height: int
    data: bytes  # width * height * 3, row-major RGB
    key: str  # fingerprint of size + pixels


def load_rgb(image: ImageInput) -> RGBImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    from retllm_lite.encode import formats
    from retllm_lite.encode.preprocess import ImageLoadError, load_image
    from retllm_lite.transparency import flatten_transparency

    if isinstance(image, Image.Image):
        img = image
        name = "<in-memory image>"
    else:
        path = Path(image)
        name = str(path)
        if not path.is_file():
            raise BadInput(f"image not found: {path}")
        if formats.kind_of(path) in ("heif", "avif", "raw"):
            # phone and camera formats: decoded (upright, guarded) as indexing decodes them
            try:
                img = load_image(path).image
            except ImageLoadError as exc:
                raise BadInput(f"cannot read image {path}: {exc}") from None
        else:
            try:
                img = Image.open(path)
                img.load()
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise BadInput(f"cannot read image {path}: {exc}") from exc
    try:
        img = ImageOps.exif_transpose(img)
        rgb = flatten_transparency(img).convert("RGB")
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot decode image {name}: {exc}") from exc
    w, h = rgb.size
    if w == 0 or h == 0:
        raise BadInput(f"image {name} is empty")
    data = rgb.tobytes()
    key = fingerprint_bytes(f"{w}x{h}:".encode() + data)
    return RGBImage(width=w, height=h, data=data, key=key)
