"""The on-disk image-embedding cache: keyed on what shapes the embeddings, hits validated.

A stale entry (another llama.cpp build, another projector behaviour, another image-token
budget) must never be decoded: a token count or chunk count that does not fit the image's
chunks as mtmd tokenises them now is a miss, and so is any entry written under other
runtime settings.
"""

from __future__ import annotations

import numpy as np
import pytest

from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
from retllm_lite.rerank.scorer import Item
from vlm_fixtures import photo as _photo


def _scorer(files, cache, **kwargs) -> LlamaMtmdScorer:
    return LlamaMtmdScorer(files.model, files.mmproj, embedding_cache=cache, n_threads=1, **kwargs)


def _scores(scores):
    return [(s.p_true, s.p_false, s.entropy) for s in scores]


def _rewrite(path, **arrays) -> None:
    """Replace an entry's arrays in place (keeping whatever else it stores)."""
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files if not k.startswith("c")}
    data.update(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **data)


@pytest.fixture
def cached(tiny_vlm_f16, vlm_images, vlm_captions, tmp_path):
    """One image in a fresh cache; returns (cache dir, its entry, query, candidates, scores)."""
    cache = tmp_path / "emb"
    query, cands = Item(image=vlm_images[3]), vlm_captions[:3]
    with _scorer(tiny_vlm_f16, cache) as s:
        want = s.score_pairs(query, cands, enhance="always")
    (entry,) = cache.rglob("*.npz")
    return cache, entry, query, cands, want


def test_a_hit_with_another_token_count_is_a_miss(tiny_vlm_f16, cached):
    cache, entry, query, cands, want = cached
    with np.load(entry) as npz:
        emb = npz["c0"]
    _rewrite(entry, c0=np.concatenate([emb, emb[:4]]))  # e.g. a projector that now emits more tokens
    with _scorer(tiny_vlm_f16, cache) as s:
        got = s.score_pairs(query, cands, enhance="always")
        assert s.stats.embedding_disk_hits == 0 and s.stats.images_encoded == 1
    assert _scores(got) == _scores(want)
    with np.load(entry) as npz:  # rewritten with what the image takes now
        assert int(npz["n_chunks"]) == 1 and npz["c0"].shape == emb.shape


def test_a_hit_with_another_chunk_count_is_a_miss(tiny_vlm_f16, cached):
    """Today's tokenisation gives one chunk; an entry with two must not be wrapped onto it."""
    cache, entry, query, cands, want = cached
    with np.load(entry) as npz:
        emb = npz["c0"]
    stale = np.random.default_rng(0).normal(size=emb.shape).astype(np.float32)
    _rewrite(entry, n_chunks=np.int64(2), c0=stale, c1=emb)
    with _scorer(tiny_vlm_f16, cache) as s:
        got = s.score_pairs(query, cands, enhance="always")
        assert s.stats.embedding_disk_hits == 0 and s.stats.images_encoded == 1
    assert _scores(got) == _scores(want)


def test_a_valid_hit_is_used(tiny_vlm_f16, cached):
    cache, _entry, query, cands, want = cached
    with _scorer(tiny_vlm_f16, cache) as s:
        got = s.score_pairs(query, cands, enhance="always")
        assert s.stats.embedding_disk_hits == 1 and s.stats.images_encoded == 0
    assert _scores(got) == _scores(want)


def test_namespace_covers_the_llama_cpp_build_and_image_budget(tiny_vlm_f16):
    from retllm_lite.rerank.embedding_cache import cache_namespace

    with _scorer(tiny_vlm_f16, None) as s:
        settings = s.rt.image_settings()
    assert settings["runtime"].startswith("llama-cpp-python ") and "libmtmd " in settings["runtime"]
    assert "unknown" not in settings["runtime"]
    sha = "ab" * 32
    base = cache_namespace(sha, settings)
    for change in (
        {"runtime": settings["runtime"] + "-other-build"},
        {"image_tokens": [256, 300]},
        {"vision_flash_attn": True},
    ):
        assert cache_namespace(sha, {**settings, **change}) != base, change
    assert cache_namespace("cd" * 32, settings) != base
    assert cache_namespace(sha, dict(settings)) == base  # deterministic


def test_another_image_token_budget_never_reads_the_entries(tiny_qwen2vl, tmp_path):
    cache = tmp_path / "emb"
    query, cands = "a red photo", [Item(image=_photo((900, 1200), 2))]
    with _scorer(tiny_qwen2vl, cache, max_image_tokens=300) as small:
        small.score_pairs(query, cands)
    with _scorer(tiny_qwen2vl, cache) as default, _scorer(tiny_qwen2vl, None) as fresh:
        got = default.score_pairs(query, cands)
        assert default.stats.embedding_disk_hits == 0 and default.stats.images_encoded == 1
        assert _scores(got) == _scores(fresh.score_pairs(query, cands))
    assert len({p.parent.parent.name for p in cache.rglob("*.npz")}) == 2  # one namespace per budget


def test_tiled_images_keep_every_tile_and_a_missing_tile_is_a_miss(tiny_smolvlm, tmp_path):
    """SmolVLM cuts an image into tiles + an overview, one chunk each; the entry holds all."""
    cache = tmp_path / "emb"
    query, cands = Item(image=_photo((64, 48), 6)), ["a green field", "a red car"]
    with _scorer(tiny_smolvlm, cache) as first:
        want = first.score_pairs(query, cands, enhance="always")  # the tiles twice per prompt
        n_chunks = sum(seg.kind == "image" for seg in first.layout(query, cands[0]))
    assert n_chunks == 5  # 2 x 2 tiles + the overview
    (entry,) = cache.rglob("*.npz")
    with np.load(entry) as npz:
        assert int(npz["n_chunks"]) == n_chunks
        tiles = [npz[f"c{i}"] for i in range(n_chunks)]
    with _scorer(tiny_smolvlm, cache) as hit:
        assert _scores(hit.score_pairs(query, cands, enhance="always")) == _scores(want)
        assert hit.stats.embedding_disk_hits == 1 and hit.stats.images_encoded == 0
    # an entry one tile short (e.g. another tiling): not wrapped onto the missing tile
    _rewrite(entry, n_chunks=np.int64(n_chunks - 1), **{f"c{i}": tiles[i] for i in range(n_chunks - 1)})
    with _scorer(tiny_smolvlm, cache) as short:
        assert _scores(short.score_pairs(query, cands, enhance="always")) == _scores(want)
        assert short.stats.embedding_disk_hits == 0 and short.stats.images_encoded == 1
