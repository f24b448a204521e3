"""Read one image file for indexing: fingerprint its bytes, decode and preprocess it.

The one place a file becomes pixels for the image tower, shared by the local indexer's
threads, the LanceDB indexer and the Ray Data actors (``ray_embed.py``), so every path
embeds exactly the same pixels. Nothing here raises for a bad file: what went wrong is a
one-line ``error``; what the decoder warned about an image it could read is ``warning``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encode.base import PixelEncoder
from ..encode.preprocess import ImageLoadError
from ..hashing import fingerprint_bytes
from ..pil_warnings import recorded
from .capture import Capture, read_capture
from .scan import FileEntry


@dataclass
class LoadedFile:
    entry: FileEntry
    fingerprint: str | None = None
    pixels: np.ndarray | None = None  # float32 [3, H, W]; None: an error, or content already known
    width: int | None = None
    height: int | None = None
    error: str | None = None
    warning: str | None = None  # what the decoder warned about (one line), for an ok image
    capture: Capture | None = None  # EXIF capture time and camera (None: the file was not read)

    def capture_columns(self) -> dict[str, str | None]:
        """The catalog's capture columns for this file (empty when it could not be read)."""
        return self.capture.columns() if self.capture is not None else {}


def warning_line(messages: list[str]) -> str | None:
    return "; ".join(dict.fromkeys(messages))[:300] if messages else None


def load_file(encoder: PixelEncoder, entry: FileEntry, known: frozenset[str] = frozenset()) -> LoadedFile:
    """Fingerprint ``entry``'s bytes and, unless that content is in ``known``, decode it to pixels."""
    out = LoadedFile(entry)
    try:
        with open(entry.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        out.error = "cannot read file: it vanished after the folder was scanned"
        return out
    except OSError as exc:
        out.error = f"cannot read file: {exc.strerror or exc}"
        return out
    if not data:
        out.error = "empty file (0 bytes)"
        return out
    out.fingerprint = fingerprint_bytes(data)
    out.capture = read_capture(data, entry.path)
    if out.fingerprint in known:
        return out  # content already embedded: link it, no decode
    try:
        with recorded() as caught:  # not printed between progress lines
            loaded = encoder.load_image(data, name=entry.path)
            out.pixels = encoder.preprocess(loaded.image)
        out.width, out.height = loaded.width, loaded.height
        out.warning = warning_line(loaded.warnings + caught)
    except ImageLoadError as exc:
        out.error = str(exc)
    except Exception as exc:  # a decoder bug must not stop the run
        out.error = f"cannot decode image: {type(exc).__name__}: {exc}"[:300]
    return out


@dataclass
class EmbeddedFile:
    """A file after embedding: a vector, an error, or neither (content already in the index)."""

    entry: FileEntry
    fingerprint: str | None
    vector: np.ndarray | None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    warning: str | None = None

    @property
    def known_content(self) -> bool:
        return self.vector is None and self.error is None


def embed_loaded(encoder: PixelEncoder, loaded: list[LoadedFile]) -> list[EmbeddedFile]:
    """Embed the decoded files of a batch in one call; pass the others through."""
    decoded = [f for f in loaded if f.pixels is not None]
    vectors = iter(encoder.embed_pixels(np.stack([f.pixels for f in decoded])) if decoded else ())
    return [
        EmbeddedFile(
            f.entry,
            f.fingerprint,
            next(vectors) if f.pixels is not None else None,
            f.width,
            f.height,
            f.error,
            f.warning,
        )
        for f in loaded
    ]
