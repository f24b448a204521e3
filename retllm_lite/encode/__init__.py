"""Encode: images and texts to unit-length vectors with a CLIP-style model (ONNX, no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadModelFile
from .base import Encoder, EncoderInfo, PixelEncoder, normalize
from .manifest import CLIP_FORMAT, MANIFEST_NAME, ClipManifest
from .onnx_clip import OnnxClipEncoder
from .preprocess import ImageLoadError, LoadedImage, PreprocessConfig, load_image, preprocess

# manifest "format" -> implementation. A new model family registers here.
ENCODERS: dict[str, type] = {CLIP_FORMAT: OnnxClipEncoder}

DEFAULT_CLIP_MODEL = "clip-vit-b-32"

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "ENCODERS",
    "ClipManifest",
    "Encoder",
    "EncoderInfo",
    "ImageLoadError",
    "LoadedImage",
    "PixelEncoder",
    "PreprocessConfig",
    "load_encoder",
    "load_image",
    "normalize",
    "preprocess",
]


def load_encoder(model_dir: str | os.PathLike, variant: str | None = None, **kwargs) -> Encoder:
    """Load the encoder in a model directory (``~`` expanded).

    Takes a folder, not a model name: names are the model store's business
    (``retllm_lite.models.store.resolve_clip_dir``, or ``retllm_lite.load_encoder``, which
    accepts either), so that encoding never depends on the store.
    """
    directory = Path(model_dir).expanduser()
    try:
        fmt = json.loads((directory / MANIFEST_NAME).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = CLIP_FORMAT  # let the implementation produce the precise error
    cls = ENCODERS.get(fmt)
    if cls is None:
        raise BadModelFile(
            f"{directory}: model format {fmt!r} is not an encoder this version knows",
            hint=f"known formats: {', '.join(ENCODERS)}",
        )
    return cls(directory, variant=variant, **kwargs)
