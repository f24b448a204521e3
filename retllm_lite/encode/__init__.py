"""Encode: images and texts to unit-length vectors with a CLIP-style model (ONNX, no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadModelFile, ModelNotFound
from ..paths import models_dir
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
    """A model directory from a path, a model name in the models dir, or the default."""
    name = str(name_or_dir or os.environ.get("RETLLM_CLIP_MODEL") or DEFAULT_CLIP_MODEL)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if os.sep not in name and (models_dir() / name).is_dir():
        return models_dir() / name
    if path.exists():
        raise ModelNotFound(f"{path}: not a model directory", hint="pass the folder that holds manifest.json")
    raise ModelNotFound(
        f"no CLIP model {name!r} on this machine",
        hint=(
            "export one with 'retllm quantize clip ViT-B-32 --pretrained openai --out DIR' "
            "(needs the export extra and a network), then pass --clip-model DIR"
        ),
    )


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
