"""Which files are photos, what decodes each kind, and what to install when a decoder is missing.

Pillow reads JPEG, PNG, WebP, GIF, BMP and TIFF itself, and AVIF from Pillow 11.3 (its
wheels bundle libavif). HEIC/HEIF needs pillow-heif, whose opener is registered with
Pillow once per process (``register_heif``). Camera RAW files go through LibRaw (rawpy,
``raw_decode.py``), chosen by the file's extension: most RAW formats are TIFF inside and
Pillow would otherwise read a random sub-image of them. pillow-heif and rawpy come with
the ``photos`` extra, which the default install includes where wheels exist.

Files next to photos that are not photos themselves are recognised so they can be
reported as skipped, with the reason, instead of silently ignored: sidecars (XMP, AAE,
THM, ...) and the video half of an iPhone Live Photo (``IMG_1.MOV`` beside ``IMG_1.HEIC``).
"""

from __future__ import annotations

import functools
import importlib
import os
import threading

PIL_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
AVIF_EXTENSIONS = frozenset({".avif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
RAW_EXTENSIONS = frozenset(
    {
        ".dng",  # Adobe DNG (also phones: Apple ProRAW, Pixel, Samsung)
        ".cr2", ".cr3", ".crw",  # Canon
        ".nef", ".nrw",  # Nikon
        ".arw", ".srf", ".sr2",  # Sony
        ".raf",  # Fujifilm
        ".orf",  # Olympus / OM System
        ".rw2", ".rwl",  # Panasonic, Leica
        ".pef",  # Pentax
        ".srw",  # Samsung
        ".x3f",  # Sigma
        ".3fr", ".fff",  # Hasselblad
        ".iiq",  # Phase One
        ".erf", ".kdc", ".dcr", ".mrw", ".mef", ".mos",
    }
)  # fmt: skip
IMAGE_EXTENSIONS = PIL_EXTENSIONS | AVIF_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS
SIDECAR_EXTENSIONS = frozenset({".xmp", ".aae", ".thm", ".pp3", ".dop", ".on1", ".cos", ".xmp~"})
LIVE_PHOTO_VIDEO_EXTENSIONS = frozenset({".mov", ".mp4", ".m4v"})
# what a Live Photo's still can be: the video beside one of these is its motion half
LIVE_PHOTO_STILL_EXTENSIONS = HEIF_EXTENSIONS | frozenset({".jpg", ".jpeg", ".dng"})

INSTALL_PHOTOS = "pip install 'retllm-lite[photos]'"


def extension(name: str | bytes | os.PathLike) -> str:
    raw = os.fsencode(name)
    return os.path.splitext(raw)[1].lower().decode("ascii", "replace")


def kind_of(name: str | bytes | os.PathLike) -> str | None:
    """'pil', 'avif', 'heif' or 'raw' for a photo file name; None for anything else."""
    ext = extension(name)
    if ext in PIL_EXTENSIONS:
        return "pil"
    if ext in AVIF_EXTENSIONS:
        return "avif"
    if ext in HEIF_EXTENSIONS:
        return "heif"
    if ext in RAW_EXTENSIONS:
        return "raw"
    return None


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@functools.cache  # asked once per file scanned
def avif_supported() -> bool:
    from PIL import features

    return bool(features.check("avif"))


@functools.cache  # asked once per file scanned
def heif_supported() -> bool:
    return _has("pillow_heif")


@functools.cache  # asked once per file scanned
def raw_supported() -> bool:
    return _has("rawpy")


def missing_decoder(name: str | bytes | os.PathLike) -> str | None:
    """Why a photo of this name cannot be decoded here (one line, with what to install), or None."""
    kind = kind_of(name)
    ext = extension(name).lstrip(".").upper()
    if kind == "heif" and not heif_supported():
        return f"{ext} needs pillow-heif, which is not installed: {INSTALL_PHOTOS}"
    if kind == "raw" and not raw_supported():
        return f"{ext} (camera RAW) needs rawpy, which is not installed: {INSTALL_PHOTOS}"
    if kind == "avif" and not avif_supported():
        return "AVIF needs Pillow 11.3 or later with AVIF support: pip install -U pillow"
    return None


_heif_lock = threading.Lock()
_heif_registered = False


def register_heif() -> bool:
    """Teach Pillow to open HEIC/HEIF (once per process); False when pillow-heif is missing."""
    global _heif_registered
    if _heif_registered:
        return True
    with _heif_lock:
        if _heif_registered:
            return True
        try:
            import pillow_heif
        except ImportError:
            return False
        # AVIF stays with Pillow's own plugin; thumbnails are not wanted, the primary image is
        pillow_heif.register_heif_opener(thumbnails=False)
        _heif_registered = True
        return True
