"""Fine stage: rescore (query, candidate) pairs with a vision-language model (RetLLM).

``Scorer`` (ranking rule, CrossEncoder-like API) lives in ``scorer``; the llama.cpp backend
in ``llama_mtmd`` (imported lazily: it loads llama-cpp-python). See docs/rerank.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Item": "retllm_lite.rerank.scorer",
    "PairScore": "retllm_lite.rerank.scorer",
    "PairScorer": "retllm_lite.rerank.scorer",
    "Enhance": "retllm_lite.rerank.scorer",
    "Ranked": "retllm_lite.rerank.scorer",
    "Scorer": "retllm_lite.rerank.scorer",
    "rank_order": "retllm_lite.rerank.scorer",
    "LlamaMtmdScorer": "retllm_lite.rerank.llama_mtmd",
    "PromptTemplate": "retllm_lite.rerank.prompts",
    "EmbeddingCache": "retllm_lite.rerank.embedding_cache",
    "read_manifest": "retllm_lite.rerank.manifest",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'retllm_lite.rerank' has no attribute {name!r}")
