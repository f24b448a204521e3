"""A prompt as libmtmd tokenised it: text-token chunks and image chunks, parsed.

``Chunks`` owns the ``mtmd_input_chunks`` handle that ``LlamaRuntime.tokenize`` returns
and frees it; each ``Chunk`` is one run of text tokens or one image placeholder (its token
count, positions and token grid).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from retllm_lite.errors import BadInput

CHUNK_TEXT = 0
CHUNK_IMAGE = 1


@dataclass
class Chunk:
    """One chunk of a tokenised prompt: text tokens, or an image placeholder."""

    kind: int
    tokens: list[int]  # text chunks
    handle: Any = None  # mtmd_input_chunk pointer (valid while its Chunks lives)
    image_id: str | None = None
    n_tokens: int = 0
    n_pos: int = 0
    nx: int = 0  # image chunks: token grid (mtmd_image_tokens_get_nx / _ny)
    ny: int = 0


class Chunks:
    """Owns an ``mtmd_input_chunks`` and its parsed view."""

    def __init__(self, mtmd: Any, handle: Any):
        self._mtmd = mtmd
        self.handle = handle
        self.items: list[Chunk] = []
        for i in range(mtmd.mtmd_input_chunks_size(handle)):
            c = mtmd.mtmd_input_chunks_get(handle, i)
            kind = mtmd.mtmd_input_chunk_get_type(c)
            if kind == CHUNK_TEXT:
                n = ctypes.c_size_t(0)
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                toks = [int(ptr[j]) for j in range(n.value)]
                self.items.append(Chunk(CHUNK_TEXT, toks, c, n_tokens=len(toks), n_pos=len(toks)))
            elif kind == CHUNK_IMAGE:
                cid = mtmd.mtmd_input_chunk_get_id(c)
                img = mtmd.mtmd_input_chunk_get_tokens_image(c)
                self.items.append(
                    Chunk(
                        CHUNK_IMAGE,
                        [],
                        c,
                        image_id=cid.decode() if cid else None,
                        n_tokens=int(mtmd.mtmd_input_chunk_get_n_tokens(c)),
                        n_pos=int(mtmd.mtmd_input_chunk_get_n_pos(c)),
                        nx=int(mtmd.mtmd_image_tokens_get_nx(img)) if img else 0,
                        ny=int(mtmd.mtmd_image_tokens_get_ny(img)) if img else 0,
                    )
                )
            else:
                raise BadInput("only text and image inputs are supported")

    def image_layout(self) -> tuple[tuple[int, int, int], ...]:
        """Per image chunk, in order: (n_tokens, nx, ny), what cached embeddings must fit."""
        return tuple((ch.n_tokens, ch.nx, ch.ny) for ch in self.items if ch.kind == CHUNK_IMAGE)

    def free(self) -> None:
        if self.handle:
            self._mtmd.mtmd_input_chunks_free(self.handle)
            self.handle = None

    def __enter__(self) -> Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()
