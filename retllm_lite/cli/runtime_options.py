"""The VLM runtime options ``retllm search --rerank`` and ``retllm eval`` share.

``vlm_runtime_options`` adds ``--threads``, ``--n-ctx``, ``--n-batch`` and
``--max-image-tokens`` to a command and hands it one ``vlm_runtime`` argument, a
``VlmRuntime`` whose ``scorer_kwargs()`` go to ``LlamaMtmdScorer``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

DEFAULT_N_BATCH = 512
DEFAULT_KV_CACHE_MB = 4096.0


@dataclass(frozen=True)
class VlmRuntime:
    threads: int | None = None
    n_ctx: int | None = None  # None: sized from the prompts
    n_batch: int = DEFAULT_N_BATCH
    max_image_tokens: int | None = None  # None: per family (Qwen-VL 512); 0: the model's own
    kv_cache_mb: float = DEFAULT_KV_CACHE_MB  # 0: no KV-state cache

    def scorer_kwargs(self) -> dict[str, Any]:
        return {
            "n_threads": self.threads,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "max_image_tokens": self.max_image_tokens,
            # disk budget of the KV-state cache (LlamaMtmdScorer builds it: model and projector sha256)
            "state_cache_mb": self.kv_cache_mb or None,
        }


def vlm_runtime_options(fn: Callable) -> Callable:
    """Add the VLM runtime options; pass them on as ``vlm_runtime``."""

    @functools.wraps(fn)
    def wrapper(*args, threads, n_ctx, n_batch, max_image_tokens, kv_cache_mb, **kwargs):
        if n_ctx is not None and n_ctx < n_batch:
            raise click.BadParameter(f"{n_ctx} is smaller than --n-batch ({n_batch})", param_hint="--n-ctx")
        runtime = VlmRuntime(threads, n_ctx, n_batch, max_image_tokens, kv_cache_mb)
        return fn(*args, vlm_runtime=runtime, **kwargs)

    options = [
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            help="CPU threads (default: the physical cores this process may use).",
        ),
        click.option(
            "--n-ctx",
            type=click.IntRange(min=256),
            help="VLM context size in tokens (default: sized from each prompt, up to the model's).",
        ),
        click.option(
            "--n-batch",
            type=click.IntRange(min=1),
            default=DEFAULT_N_BATCH,
            show_default=True,
            help="Tokens per llama.cpp decode (Gemma3 decodes a whole image in one).",
        ),
        click.option(
            "--kv-cache-mb",
            type=click.FloatRange(min=0),
            default=DEFAULT_KV_CACHE_MB,
            show_default=True,
            help="Disk budget for saved KV states of candidate images (text -> image queries "
            "decode each image once, then restore it); 0 turns it off.",
        ),
        click.option(
            "--max-image-tokens",
            type=click.IntRange(min=0),
            metavar="N",
            help="Most visual tokens per image on dynamic-resolution VLMs: the photo is resized to "
            "fit (default: 512 on Qwen-VL, 256 at least, its authors' budget; the model's own "
            "elsewhere; 0: the model's own everywhere).",
        ),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), wrapper)
