"""The encoder interface every CLIP-like model implements.

A new model family is one new file with a class that satisfies ``Encoder`` (and
``PixelEncoder``, to be indexed in batches) and an entry in ``retllm_lite.encode.ENCODERS``
keyed by its manifest ``format``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .preprocess import LoadedImage, PreprocessConfig

ImageSource = str | os.PathLike | bytes | Image.Image


@dataclass(frozen=True)
class EncoderInfo:
    """Identifies the exact weights that produced a vector; stored in every index."""

    name: str
    manifest_sha256: str
    variant: str  # "fp32" or "int8"
    dim: int
    location: str  # the model directory (or registry name) it was loaded from

    @property
    def key(self) -> str:
        return f"{self.manifest_sha256}:{self.variant}"


@runtime_checkable
class Encoder(Protocol):
    """One model's two towers, sharing an embedding space: images or texts in, unit vectors out.

    This is all that searching, serving and composing queries need.
    """

    info: EncoderInfo

    def embed_images(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Load, preprocess and embed: unit-length float32 [B, dim]."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 [B, dim]."""


@runtime_checkable
class PixelEncoder(Encoder, Protocol):
    """The batched path of indexing (and of ``retllm eval``'s vector cache): images are
    decoded and preprocessed in loader threads, then embedded as one stacked batch.

    The pixel pipeline's details are exposed here only, not on ``Encoder``.
    """

    preprocess_config: PreprocessConfig

    def load_image(self, source: ImageSource, name: str | bytes | os.PathLike | None = None) -> LoadedImage:
        """Decode an image (EXIF-rotated, fast JPEG decode where it keeps parity).

        ``name``: the file name of ``source`` bytes (RAW files are told apart by it).
        """

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [3, H, W], ready for ``embed_pixels``."""

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] -> unit-length float32 [B, dim]."""


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))
