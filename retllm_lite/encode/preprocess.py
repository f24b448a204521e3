"""Image loading and CLIP preprocessing in PIL + numpy (no torch).

``preprocess`` reproduces open_clip's eval transform bit for bit: the same PIL calls
in the same order (resize on the image's own mode, centre crop with torchvision's
rounding, convert to RGB, /255, normalise in float32). The one departure: an image with
transparent pixels is first composited onto white (``transparency.py``), where open_clip
would drop its alpha channel. ``load_image`` adds what open_clip leaves to the caller:
EXIF orientation and, for JPEG, a reduced-size decode (``Image.draft``) that keeps at
least ``draft_factor`` times the target resolution; ``draft_factor=None`` decodes at
full size. Pillow's warnings while decoding are returned with the image, not printed.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..pil_warnings import recorded
from ..transparency import flatten_transparency
from . import formats
from .raw_decode import RawDecodeError, decode_raw

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PreprocessConfig:
    """What a CLIP image tower expects; stored in every model manifest."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # "shortest" (resize + centre crop) or "squash"
    crop_rounding: str = "round"  # torchvision rounds the crop offset; HF floors it
    rgb_first: bool = False  # HF image processors convert to RGB before resizing
    resize_size: int | None = None  # "shortest": short side before the crop (None: ``size``)

    def __post_init__(self) -> None:
        if self.interpolation not in _FILTERS:
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"unsupported resize_mode {self.resize_mode!r}")
        if self.crop_rounding not in ("round", "floor"):
            raise ValueError(f"unsupported crop_rounding {self.crop_rounding!r}")
        if self.resize_size is not None and (self.resize_mode != "shortest" or self.resize_size < self.size):
            raise ValueError(
                f"resize_size {self.resize_size} needs resize_mode 'shortest' and must be >= size {self.size}"
            )

    @property
    def short_side(self) -> int:
        """The short side after resizing (what a reduced JPEG decode must keep)."""
        return self.resize_size or self.size

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        size = d.get("size", 224)
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"only square image sizes are supported, got {size}")
            size = size[0]
        return cls(
            size=int(size),
            mean=tuple(float(x) for x in d.get("mean", OPENAI_MEAN)),
            std=tuple(float(x) for x in d.get("std", OPENAI_STD)),
            interpolation=d.get("interpolation", "bicubic"),
            resize_mode=d.get("resize_mode", "shortest"),
            crop_rounding=d.get("crop_rounding", "round"),
            rgb_first=bool(d.get("rgb_first", False)),
            resize_size=int(d["resize_size"]) if d.get("resize_size") is not None else None,
        )

    def to_dict(self) -> dict:
        extra = {} if self.resize_size is None else {"resize_size": self.resize_size}
        return {
            "size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "crop_rounding": self.crop_rounding,
            "rgb_first": self.rgb_first,
            **extra,
        }


@dataclass
class LoadedImage:
    image: Image.Image
    width: int  # as displayed (after EXIF orientation), at full resolution
    height: int
    format: str | None = None
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what Pillow warned about, one line each


class ImageLoadError(Exception):
    """An image that cannot be decoded; the message is one line for the catalog."""


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_standard_mode(img: Image.Image) -> Image.Image:
    """Map modes PIL cannot resize or convert sensibly (16-bit, float) to 8-bit L.

    open_clip's ``convert("RGB")`` clips 16-bit values to 255 (a white image); we scale
    instead, and a transparent grey level (PNG tRNS) becomes an alpha band (LA). 8-bit
    modes (L, LA, P, RGB, RGBA, CMYK, YCbCr) are left to ``preprocess`` so that it
    matches open_clip exactly.
    """
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        grey = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        transparent = img.info.get("transparency")
        if not isinstance(transparent, int):
            return grey
        alpha = Image.fromarray(np.where(arr == transparent, 0, 255).astype(np.uint8), "L")
        return Image.merge("LA", (grey, alpha))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L")
    if img.mode == "1":
        return img.convert("L")
    return img


def load_image(
    source: str | os.PathLike | bytes | Image.Image,
    target_size: int | None = None,
    draft_factor: float | None = 2.0,
    name: str | bytes | os.PathLike | None = None,
) -> LoadedImage:
    """Open and fully decode an image, EXIF orientation applied.

    With ``target_size`` and ``draft_factor``, a JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps its short side >= draft_factor * target_size.
    ``name`` is the file name of ``source`` bytes (a path source is its own name): camera
    RAW files are recognised by it and decoded by LibRaw (``raw_decode.py``); HEIC/HEIF
    needs pillow-heif (``formats.py``). Raises ImageLoadError with a one-line reason for
    anything unreadable. What Pillow warns about meanwhile is in ``LoadedImage.warnings``,
    not printed.
    """
    if isinstance(source, Image.Image):
        img = source
        img.load()
        width, height = img.size
        return LoadedImage(img, width, height, img.format)
    if name is None and not isinstance(source, bytes):
        name = source
    kind = formats.kind_of(name) if name is not None else None
    missing = formats.missing_decoder(name) if kind in ("heif", "raw", "avif") else None
    if missing is not None:
        raise ImageLoadError(missing)
    if kind == "raw":
        return _load_raw(source, target_size, draft_factor)
    if kind in (None, "heif"):
        formats.register_heif()  # bytes of unknown kind may be HEIC (an uploaded query image)
    try:
        with recorded(raise_for=(Image.DecompressionBombWarning,)) as caught:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
            width, height = img.size
            fmt = img.format
            if img.format == "JPEG" and target_size and draft_factor:
                short = min(width, height)
                want = target_size * draft_factor
                if short > 2 * want:
                    scale = short / want
                    img.draft(None, (math.ceil(width / scale), math.ceil(height / scale)))
            orientation = img.getexif().get(0x0112, 1)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = _to_standard_mode(img)
    except Image.DecompressionBombWarning as exc:
        raise ImageLoadError(f"image too large to decode safely: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large to decode safely: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("not an image PIL can read (unknown format or not an image)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode image: {_one_line(exc)}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return LoadedImage(img, width, height, fmt, warnings=caught)


def _one_line(exc: BaseException) -> str:
    """A decoder's message as one line (libheif's end with a newline), at most 300 characters."""
    return " ".join(str(exc).split())[:300]


def _load_raw(source: str | os.PathLike | bytes, target_size: int | None, draft_factor: float | None):
    """A camera RAW file through LibRaw, with the same guards and one-line errors as the rest."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        min_short = math.ceil(target_size * draft_factor) if target_size and draft_factor else None
        with recorded(raise_for=(Image.DecompressionBombWarning,)) as caught:
            raw = decode_raw(data, min_short)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"image too large to decode safely: {exc}") from None
    except RawDecodeError as exc:
        raise ImageLoadError(str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError("cannot decode camera RAW: its embedded preview is not an image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"cannot decode camera RAW: {_one_line(exc)}") from None
    return LoadedImage(raw.image, raw.width, raw.height, "RAW", info={"raw": raw.how}, warnings=caught)


def _resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    size = cfg.size
    resample = _FILTERS[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return img.resize((size, size), resample) if img.size != (size, size) else img
    w, h = img.size
    # torchvision's Resize(int) and HF's shortest_edge resize: short side -> short,
    # long side -> int(short * long / short_before)
    short = cfg.short_side
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    if cfg.crop_rounding == "round":
        top = round((new_h - size) / 2.0)
        left = round((new_w - size) / 2.0)
    else:
        top = (new_h - size) // 2
        left = (new_w - size) // 2
    if (new_w, new_h) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return img


def preprocess(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """PIL image -> float32 array [3, size, size], normalised as the tower expects.

    Transparent pixels are composited onto white first; an image without any keeps
    exactly open_clip's (or the HF processor's) path.
    """
    img = flatten_transparency(img)
    if cfg.rgb_first:
        img = img.convert("RGB")
    img = _resize_crop(img, cfg).convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
