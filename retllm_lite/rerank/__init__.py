"""Fine stage: rescore (query, candidate) pairs with a vision-language model (RetLLM).

Data flow: ``pairs`` (Item in, PairScore out) -> ``backend`` (the seam: answer
probabilities per pass; ``llama_mtmd`` is the llama.cpp one, imported lazily) ->
``gating`` (visual enhancement) -> ``ranking`` (the rule) -> ``scorer`` (``Scorer``, a
CrossEncoder-like API over them). See docs/rerank.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Item": "retllm_lite.rerank.pairs",
    "PairScore": "retllm_lite.rerank.pairs",
    "PairBackend": "retllm_lite.rerank.backend",
    "PairScorer": "retllm_lite.rerank.backend",
    "BACKENDS": "retllm_lite.rerank.backend",
    "load_backend": "retllm_lite.rerank.backend",
    "Enhance": "retllm_lite.rerank.gating",
    "Ranked": "retllm_lite.rerank.ranking",
    "Scorer": "retllm_lite.rerank.scorer",
    "rank_order": "retllm_lite.rerank.ranking",
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
