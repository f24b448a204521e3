"""retllm-lite: offline multimodal search (RetLLM: CLIP coarse stage + VLM rerank).

The public API is imported lazily so that ``import retllm_lite`` stays cheap and never
pulls in onnxruntime, llama.cpp or torch before they are needed.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encode import Encoder

__version__ = "0.1.0"

_LAZY = {
    "Index": "retllm_lite.index.store",
    "Indexer": "retllm_lite.index.indexer",
    "open_index": "retllm_lite.index.backend",
    "Retriever": "retllm_lite.pipeline",
    "SearchHit": "retllm_lite.pipeline",
    "Scorer": "retllm_lite.rerank.scorer",
}

__all__ = [*_LAZY, "__version__", "load_encoder"]


def load_encoder(
    name_or_dir: str | os.PathLike | None = None, variant: str | None = None, **kwargs
) -> Encoder:
    """The CLIP encoder of a model folder, a registry name (pulled) or, by default,
    ``$RETLLM_CLIP_MODEL`` / the registry's default.

    The name is resolved by the model store; ``retllm_lite.encode.load_encoder`` itself
    takes folders only.
    """
    from .encode import load_encoder as load_from_dir
    from .models.store import resolve_clip_dir

    return load_from_dir(resolve_clip_dir(name_or_dir), variant=variant, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retllm_lite' has no attribute {name!r}")
