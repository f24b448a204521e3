"""Encode: images and texts to unit-length vectors with a CLIP-style model (ONNX, no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadModelFile
from .base import Encoder, EncoderInfo, ImageEncoder, TextEncoder, normalize
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
    "ImageEncoder",
    "ImageLoadError",
    "LoadedImage",
    "PreprocessConfig",
    "TextEncoder",
    "load_encoder",
    "load_image",
    "normalize",
    "preprocess",
    "resolve_model_dir",
]


def resolve_model_dir(name_or_dir: str | os.PathLike | None) -> Path:
    """A model directory from a path, a model name in the models dir, or the default.

    Names are the registry's (``retllm models list``); one not on disk raises ModelNotFound
    saying how to get it (``retllm models pull NAME``) or which local folder to pass.
    """
    from ..models.store import resolve_clip_dir

    return resolve_clip_dir(name_or_dir)


def load_encoder(
    name_or_dir: str | os.PathLike | None = None, variant: str | None = None, **kwargs
) -> Encoder:
    """Load the encoder in a model directory (or named in the models dir)."""
    directory = resolve_model_dir(name_or_dir)
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
