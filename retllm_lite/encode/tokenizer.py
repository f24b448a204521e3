"""open_clip's BPE tokenizer without torch.

The algorithm and vocabulary are OpenAI CLIP's as shipped by open_clip (MIT; see
LICENSE-open_clip next to this file). Output is identical to
``open_clip.tokenize`` (tested on hundreds of strings, including HTML entities,
mojibake, full-width text and literal special tokens), as int64 numpy arrays.
"""

from __future__ import annotations

import gzip
import html
import itertools
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import ftfy
import numpy as np
import regex as re

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _clean(text: str) -> str:
    """open_clip's default 'lower' cleaning: ftfy, double HTML unescape, whitespace, lower."""
    # lone surrogates (e.g. from undecodable command-line bytes) cannot be UTF-8 encoded
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class ClipBpeTokenizer:
    """Tokenize text for open_clip text towers: ``tokenizer(texts) -> int64 [n, context_length]``.

    Rows are ``<start_of_text> tokens <end_of_text>`` padded with 0 and truncated to the
    context length with the last id forced to ``<end_of_text>`` (the exported text tower
    pools at the argmax id, which is why EOT, the largest id, must end every row).
    """

    input_names = ("text",)

    def __init__(self, context_length: int = 77):
        self.context_length = context_length
        self.byte_encoder = _bytes_to_unicode()
        raw = resources.files(__package__).joinpath(_VOCAB_FILE).read_bytes()
        merges_text = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges_text]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        special = ["<start_of_text>", "<end_of_text>"]
        vocab += special
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {t: t for t in special}
        self.sot_id = self.encoder["<start_of_text>"]
        self.eot_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(self.encoder)
        self.pat = re.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def _bpe(self, token: str) -> str:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        pairs = set(itertools.pairwise(word))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = set(itertools.pairwise(word))
        out = " ".join(word)
        if len(self.cache) < 100_000:
            self.cache[token] = out
        return out

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of ``text``; with ``limit``, stop once that many ids are known (same prefix)."""
        ids: list[int] = []
        for match in self.pat.finditer(_clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in match.group().encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped).split(" "))
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            # Stop BPE once the row is full: a 1 MB query must not cost a 1 MB BPE pass.
            ids = [self.sot_id, *self.encode(text, limit=self.context_length), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = ids
        return {"text": out}
