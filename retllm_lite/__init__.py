"""retllm-lite: offline multimodal search (RetLLM: CLIP coarse stage + VLM rerank).

The public API is imported lazily so that ``import retllm_lite`` stays cheap and never
pulls in onnxruntime, llama.cpp or torch before they are needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Index": "retllm_lite.index.store",
    "Indexer": "retllm_lite.index.indexer",
    "open_index": "retllm_lite.index.backend",
    "Retriever": "retllm_lite.pipeline",
    "SearchHit": "retllm_lite.pipeline",
    "load_encoder": "retllm_lite.encode",
    "Scorer": "retllm_lite.rerank.scorer",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retllm_lite' has no attribute {name!r}")
