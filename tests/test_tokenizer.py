"""The torch-free tokenizer must reproduce open_clip.tokenize exactly."""

from __future__ import annotations

import random
import string

import numpy as np
import pytest

from retllm_lite.encode.tokenizer import ClipBpeTokenizer

open_clip = pytest.importorskip("open_clip")

TRICKY = [
    "",
    " ",
    "a photo of a dog",
    "A PHOTO OF A DOG!!!",
    "two  cats\tand\na   mat",
    "&amp;lt;b&amp;gt; double-escaped HTML",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "ÃƒÂ© mojibake",
    "\uff26\uff35\uff2c\uff2c width",
    "emoji \U0001f436\U0001f431 and \u2764\ufe0f",
    "中文 日本語 한국어",
    "<start_of_text> literal special <end_of_text>",
    "don't won't it's we'll they're I'd",
    "x" * 1000,
    "word " * 200,
    "\u200b zero width \u200d joiner",
    "numbers 1234567890 3.14",
    "punctuation !@#$%^&*()_+-=[]{}|;':\",./<>?",
    "\x00\x01 control chars",
    "ﬁ ligature ﬂ",
]


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.printable + "éüßøåçñ中文日本語한국어€£¥🙂🐶—–…“”‘’"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(n)]


@pytest.mark.parametrize("context_length", [77, 16])
def test_matches_open_clip(context_length):
    ours = ClipBpeTokenizer(context_length)
    texts = TRICKY + _random_strings(500)
    expected = open_clip.tokenize(texts, context_length=context_length).numpy()
    got = ours(texts)["text"]
    mismatched = [t for t, a, b in zip(texts, got, expected, strict=True) if not np.array_equal(a, b)]
    assert not mismatched, mismatched[:5]


def test_huge_query_is_bounded_and_exact():
    ours = ClipBpeTokenizer()
    text = "a dog on a beach " * 100_000  # 1.7 MB
    got = ours([text])["text"]
    assert np.array_equal(got, open_clip.tokenize([text]).numpy())
    assert got[0, -1] == ours.eot_id
