"""Tokenizer factory: the manifest's ``tokenizer.kind`` picks the implementation.

- ``open_clip_bpe``: OpenAI CLIP's BPE (open_clip models), bundled, torch-free.
- ``hf_tokenizers``: a ``tokenizer.json`` saved next to the towers (Hugging Face CLIP or
  SigLIP exports), run by the ``tokenizers`` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BadModelFile, require


class HfTokenizer:
    """Wraps a ``tokenizer.json``; pads/truncates to a fixed length like the HF processor."""

    def __init__(self, path: Path, context_length: int, pad_id: int, input_names: Sequence[str]):
        tokenizers = require("tokenizers", "hf", "this model's tokenizer")
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise BadModelFile(f"{path}: cannot load tokenizer ({exc})") from None
        self.tok.enable_truncation(context_length)
        self.tok.enable_padding(length=context_length, pad_id=pad_id)
        self.context_length = context_length
        self.input_names = tuple(input_names)

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tok.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "text": ids}


def make_tokenizer(spec: dict, model_dir: Path):
    kind = spec.get("kind", "open_clip_bpe")
    context_length = int(spec.get("context_length", 77))
    if kind == "open_clip_bpe":
        from .tokenizer import ClipBpeTokenizer

        return ClipBpeTokenizer(context_length)
    if kind == "hf_tokenizers":
        return HfTokenizer(
            model_dir / spec.get("file", "tokenizer.json"),
            context_length,
            int(spec.get("pad_id", 0)),
            spec.get("input_names", ("input_ids", "attention_mask")),
        )
    raise BadModelFile(
        f"{model_dir}: unknown tokenizer kind {kind!r} in the manifest",
        hint="upgrade retllm-lite or re-export the model",
    )
