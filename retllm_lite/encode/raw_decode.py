"""Camera RAW files as upright PIL images, through LibRaw (rawpy).

Where the file embeds a JPEG (or bitmap) preview, that is used: it is what the camera
showed, and it costs a JPEG decode instead of a demosaic. Otherwise the mosaic is
demosaiced with the camera's white balance (at half size when that still leaves the
short side the caller asks for). Both go through the same guards as every other image:
the sensor's pixel count is checked against Pillow's decompression-bomb limit before
anything is unpacked, the preview JPEG is opened by Pillow with its own guard, and the
result is turned upright from the RAW's orientation (LibRaw's ``flip``) or, where the
preview carries one, its own EXIF orientation. Everything LibRaw refuses becomes a one-line
``ImageLoadError``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .formats import INSTALL_PHOTOS

# LibRaw's sizes.flip -> the PIL transpose that makes the image upright
_FLIP = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


class RawDecodeError(Exception):
    """A RAW file that cannot be decoded (one line)."""


@dataclass
class DecodedRaw:
    image: Image.Image  # upright RGB
    how: str  # "preview" (the embedded JPEG or bitmap) or "demosaic"
    width: int  # the sensor's picture as displayed (upright), at full resolution
    height: int


def _check_pixels(width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise Image.DecompressionBombError(
            f"Image size ({width * height} pixels) exceeds limit of {limit} pixels, "
            "could be decompression bomb DOS attack."
        )


def decode_raw(data: bytes, min_short_side: int | None = None) -> DecodedRaw:
    """A RAW file's bytes as an upright RGB image, from its preview or a demosaic.

    ``min_short_side``: a demosaic may be done at half size if its short side stays at
    least this long (None: full size). Raises RawDecodeError, or Pillow's
    DecompressionBombError for a sensor over the pixel limit.
    """
    try:
        import rawpy
    except ImportError:
        raise RawDecodeError(f"camera RAW needs rawpy, which is not installed: {INSTALL_PHOTOS}") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            _check_pixels(max(sizes.raw_width, sizes.width), max(sizes.raw_height, sizes.height))
            flip = int(sizes.flip)
            width, height = (sizes.height, sizes.width) if flip in (5, 6) else (sizes.width, sizes.height)
            preview = _preview(raw, rawpy)
            if preview is not None and _big_enough(preview, sizes, min_short_side):
                return DecodedRaw(_upright(preview, flip), "preview", width, height)
            half = bool(min_short_side) and min(sizes.width, sizes.height) // 2 >= min_short_side
            rgb = raw.postprocess(use_camera_wb=True, output_bps=8, half_size=half)
    except rawpy.LibRawError as exc:
        raise RawDecodeError(f"cannot decode camera RAW: {_libraw_message(exc)}") from None
    # LibRaw's demosaic output is already turned by its flip
    return DecodedRaw(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), "demosaic", width, height)


def _big_enough(preview: Image.Image, sizes, min_short_side: int | None) -> bool:
    """A preview serves unless it is a tiny thumbnail (smaller than asked and than half the sensor)."""
    short = min(preview.size)
    return not min_short_side or short >= min_short_side or 2 * short >= min(sizes.width, sizes.height)


def _libraw_message(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return f"{type(exc).__name__}: {text}"[:200]


def _preview(raw, rawpy) -> Image.Image | None:
    """The embedded preview, decoded (None: the file has none, or it is unreadable)."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except rawpy.LibRawError:
        return None  # a damaged preview: the mosaic may still be fine
    if thumb.format == rawpy.ThumbFormat.JPEG:
        img = Image.open(io.BytesIO(thumb.data))  # Pillow's own bomb guard applies here
        img.load()
        return img
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        arr = np.asarray(thumb.data)
        _check_pixels(arr.shape[1], arr.shape[0])
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), "RGB")
    return None


def _upright(img: Image.Image, flip: int) -> Image.Image:
    """A preview turned upright: by its own EXIF orientation if it has one, else by the RAW's."""
    own = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    if own not in (None, 1):
        return ImageOps.exif_transpose(img) or img
    how = _FLIP.get(flip)
    out = img.transpose(how) if how is not None else img
    return out.convert("RGB") if out.mode != "RGB" else out
