"""Tokenizer factory: the manifest's ``tokenizer.kind`` picks the implementation.

- ``open_clip_bpe``: OpenAI CLIP's BPE (open_clip models), bundled, torch-free.
- ``hf_tokenizers``: a ``tokenizer.json`` saved next to the towers (Hugging Face CLIP or
  SigLIP exports), run by the ``tokenizers`` package; the manifest entry is written at
  export time by ``retllm_lite.quantize.hf_layout.hf_tokenizer_spec``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BadModelFile, MissingDependency
from ..hashing import verify_file

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_SPACES = re.compile(r"\s+")


def siglip_canonicalize(text: str, lowercase: bool = True) -> str:
    """What transformers' ``SiglipTokenizer`` does before SentencePiece (from big_vision).

    ``tokenize`` maps "▁" to a space and lowercases (``do_lower_case``); ``_tokenize``
    drops ASCII punctuation, collapses whitespace and strips. Differs from the slow
    tokenizer only on literal special tokens typed in the text ("</s>", "<unk>"), which
    become plain letters here instead of control ids.
    """
    text = text.replace("\u2581", " ")
    if lowercase:
        text = text.lower()
    return _SPACES.sub(" ", text.translate(_PUNCTUATION)).strip()


def load_tokenizer_json(path: Path):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``; typed errors when it cannot be had."""
    try:
        import tokenizers
    except ImportError as exc:
        raise MissingDependency(
            f"this model's tokenizer needs the Python package 'tokenizers' ({exc})",
            hint="pip install tokenizers",
        ) from exc
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:
        raise BadModelFile(f"{path}: cannot load tokenizer ({exc})") from None


class HfTokenizer:
    """Wraps a ``tokenizer.json``; pads/truncates to a fixed length like the HF processor.

    Rows are truncated (the post-processor's end token kept) and padded to
    ``context_length`` with ``pad_id``: ``processor(text, padding="max_length",
    truncation=True)``. ``canonicalize="siglip"`` applies SigLIP's text clean-up first.
    """

    def __init__(
        self,
        path: Path,
        context_length: int,
        pad_id: int,
        input_names: Sequence[str],
        pad_token: str | None = None,
        lowercase: bool = False,
        canonicalize: str | None = None,
    ):
        if canonicalize not in (None, "siglip"):
            raise BadModelFile(
                f"{path}: unknown text canonicalization {canonicalize!r} in the manifest",
                hint="upgrade retllm-lite",
            )
        self.tok = load_tokenizer_json(path)
        self.tok.no_truncation()
        self.tok.enable_truncation(context_length)
        self.tok.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token or "[PAD]")
        self.context_length = context_length
        self.pad_id = pad_id
        self.input_names = tuple(input_names)
        self.lowercase = lowercase
        self.canonicalize = canonicalize

    def _clean(self, text: str) -> str:
        # lone surrogates (e.g. from undecodable command-line bytes) cannot cross into Rust
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        if self.canonicalize == "siglip":
            return siglip_canonicalize(text, self.lowercase)
        return text.lower() if self.lowercase else text

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tok.encode_batch([self._clean(t) for t in texts])
        ids = np.asarray([e.ids for e in enc], dtype=np.int64).reshape(len(enc), self.context_length)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64).reshape(ids.shape)
        return {"input_ids": ids, "attention_mask": mask, "text": ids}


def make_tokenizer(spec: dict, model_dir: Path):
    kind = spec.get("kind", "open_clip_bpe")
    context_length = int(spec.get("context_length", 77))
    if kind == "open_clip_bpe":
        from .tokenizer import ClipBpeTokenizer

        return ClipBpeTokenizer(context_length)
    if kind == "hf_tokenizers":
        path = model_dir / spec.get("file", "tokenizer.json")
        if spec.get("sha256"):
            verify_file(path, spec["sha256"], spec.get("bytes"))
        return HfTokenizer(
            path,
            context_length,
            int(spec.get("pad_id", 0)),
            spec.get("input_names", ("input_ids", "attention_mask")),
            pad_token=spec.get("pad_token"),
            lowercase=bool(spec.get("lowercase", False)),
            canonicalize=spec.get("canonicalize"),
        )
    raise BadModelFile(
        f"{model_dir}: unknown tokenizer kind {kind!r} in the manifest",
        hint="upgrade retllm-lite or re-export the model",
    )
