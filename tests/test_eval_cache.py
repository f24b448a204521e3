"""The eval's caches: model file hashes, CLIP vectors, VLM pair scores and listwise picks."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import numpy as np
import pytest

from retllm_lite.errors import BadInput
from retllm_lite.eval.cache import EvalCache, image_key, text_key
from retllm_lite.hashing import cached_sha256
from retllm_lite.rerank.logits import ChoiceProbs
from retllm_lite.rerank.scorer import PassScores
from retllm_lite.transparency import PIXELS_VERSION


def test_cached_sha256_is_remembered_until_the_file_changes(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"first")
    assert cached_sha256(f) == hashlib.sha256(b"first").hexdigest()
    # Same size and mtime: the remembered value (a real cache: not re-read).
    st = f.stat()
    f.write_bytes(b"FIRST")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cached_sha256(f) == hashlib.sha256(b"first").hexdigest()
    f.write_bytes(b"second!")
    assert cached_sha256(f) == hashlib.sha256(b"second!").hexdigest()


def test_eval_cache_round_trips_and_survives_reopening(tmp_path):
    path = tmp_path / "cache.sqlite3"
    with EvalCache(path) as cache:
        v = np.arange(4, dtype=np.float32) / 7
        cache.put_vectors("enc:int8", "image", {"i:a": v})
        assert cache.vectors("enc:int8", "image", ["i:a", "i:b"], 4).keys() == {"i:a"}
        assert cache.vectors("enc:int8", "image", ["i:a"], 5) == {}  # another size: not this model's
        assert cache.vectors("enc:fp32", "image", ["i:a"], 4) == {}
        assert cache.vectors("enc:int8", "text", ["i:a"], 4) == {}
        cache.put_pair_scores("ns", "t:q", {"i:a": PassScores(0.25, 0.5, 0.875, 2.5)})
        pick = ChoiceProbs(1, (0.25, 0.75), 0.5, 0.125)
        cache.put_pick("lw", "i:a", ["t:x", "t:y"], pick)
    # Many keys at once (more than one IN (...) chunk).
    with EvalCache(path) as cache:
        np.testing.assert_array_equal(
            cache.vectors("enc:int8", "image", ["i:a"] + [f"i:{n}" for n in range(1200)], 4)["i:a"], v
        )
        assert cache.pair_scores("ns", "t:q", ["i:a", "i:z"]) == {"i:a": PassScores(0.25, 0.5, 0.875, 2.5)}
        assert cache.pair_scores("other", "t:q", ["i:a"]) == {}
        assert cache.pick("lw", "i:a", ["t:x", "t:y"]) == pick
        assert cache.pick("lw", "i:a", ["t:y", "t:x"]) is None  # another candidate order


def test_a_damaged_or_older_cache_is_replaced(tmp_path):
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with EvalCache(path) as cache:
        cache.put_pair_scores("ns", "q", {"c": PassScores(0.1, 0.2, 0.3, 0.4)})
        assert cache.pair_scores("ns", "q", ["c"])
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with EvalCache(path) as cache:
        assert cache.pair_scores("ns", "q", ["c"]) == {}


def test_an_unwritable_cache_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInput, match="cannot open the eval cache") as exc:
        EvalCache(blocker / "cache.sqlite3")
    assert "RETLLM_CACHE_DIR" in str(exc.value)


def test_keys_tell_images_from_texts():
    assert text_key("a dog") != text_key("a dog ") and text_key("x").startswith("t:")
    assert image_key("abc").startswith("i:") and image_key("abc").endswith(":abc")
    # what was cached before transparency was composited is not reused
    assert image_key("abc") != "i:abc" and PIXELS_VERSION in image_key("abc")
