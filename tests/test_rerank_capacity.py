"""Real photo sizes with the default model family (Qwen2-VL): token budget, context, batches.

The tiny Qwen2-VL has Qwen2-VL's image side (14-pixel patches merged 2 x 2, dynamic
resolution, M-RoPE), so a photo costs as many image tokens as on the real model.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from retllm_lite.cli import cli
from retllm_lite.errors import BadInput
from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
from retllm_lite.rerank.scorer import Item
from vlm_fixtures import photo as _photo

SIZES = [(500, 800), (4000, 3000), (64, 64), (1000, 40), (560, 280), (1920, 1080)]


def _qwen(files, **kwargs) -> LlamaMtmdScorer:
    return LlamaMtmdScorer(files.model, files.mmproj, n_threads=1, **kwargs)


def _image_tokens(scorer: LlamaMtmdScorer, image: Image.Image) -> int:
    return sum(seg.n_tokens for seg in scorer.layout(Item(image=image), "a photo") if seg.kind == "image")


def _processor_tokens(image: Image.Image, max_tokens: int, min_tokens: int = 256) -> int:
    """transformers' Qwen2VLImageProcessor with the authors' budget: merged tokens per image."""
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(min_pixels=min_tokens * 28 * 28, max_pixels=max_tokens * 28 * 28)
    grid = proc(images=image, return_tensors="np")["image_grid_thw"][0]
    return int(grid.prod()) // 4


def test_image_tokens_follow_the_qwen2vl_processor_budget(tiny_qwen2vl):
    with _qwen(tiny_qwen2vl) as s512:  # the default: the authors' 256..512 tokens
        for size in SIZES:
            img = _photo(size)
            assert _image_tokens(s512, img) == _processor_tokens(img, 512), size
            assert 256 <= _image_tokens(s512, img) <= 512
        assert (s512.rt.min_image_tokens, s512.rt.max_image_tokens) == (256, 512)
    with _qwen(tiny_qwen2vl, max_image_tokens=300) as s300:
        for size in SIZES:
            img = _photo(size)
            assert _image_tokens(s300, img) == _processor_tokens(img, 300), size


def test_a_4000x3000_photo_reranks_with_the_tiny_qwen2vl(tiny_qwen2vl, tiny_clip_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(4000, 3000), (500, 800), (640, 480)]):
        _photo(size, i).save(photos / f"p{i}.jpg", quality=90)
    runner = CliRunner()
    idx = tmp_path / "idx"
    res = runner.invoke(cli, ["index", str(photos), "--index", str(idx), "--clip-model", str(tiny_clip_dir)])
    assert res.exit_code == 0, res.output
    args = [
        "search",
        "a red photo",
        "--rerank",
        "--vlm-model",
        str(tiny_qwen2vl.directory),
        "--index",
        str(idx),
    ]
    res = runner.invoke(cli, [*args, "-k", "3", "--enhance", "always", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    assert all(0 < r["p_true"] < 1 and r["enhanced"] for r in rows)
    # an explicit context too small for the prompt: one line naming the option
    res = runner.invoke(cli, [*args, "-k", "3", "--threads", "1", "--n-ctx", "512"])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--n-ctx" in lines[0] and "n_ctx (512)" in lines[0]


def test_context_is_sized_from_the_prompt(tiny_qwen2vl):
    """Two ~1000-token images, the candidate's twice (enhancement): more than the 2048 start."""
    query, cand = Item(image=_photo((1400, 2000), 3)), Item(image=_photo((2000, 1400), 4))
    with _qwen(tiny_qwen2vl, max_image_tokens=1000) as s:
        start = s.rt.n_ctx
        fast = s.score_pairs(query, [cand], enhance="always")
        assert s.rt.n_ctx > start >= 2048
        n_cells = sum(max(seg.n_tokens, len(seg.tokens)) for seg in s.layout(query, cand, enhanced=True))
        assert n_cells > start and s.rt.n_ctx >= n_cells
        naive = s.score_pairs(query, [cand], enhance="always", fast=False)
        assert [(a.p_true, a.entropy) for a in fast] == [(b.p_true, b.entropy) for b in naive]
    with _qwen(tiny_qwen2vl, max_image_tokens=1000, n_ctx=2048) as fixed:
        for fast_path in (True, False):
            with pytest.raises(BadInput) as exc:
                fixed.score_pairs(query, [cand], enhance="always", fast=fast_path)
            assert "n_ctx (2048)" in str(exc.value) and "--n-ctx" in str(exc.value)


def test_causal_images_decode_in_pieces_of_n_batch(tiny_qwen2vl, vlm_captions):
    """Qwen2-VL's image embeddings are decoded causally: an image may span several batches."""
    photo = Item(image=_photo((500, 800), 5))
    cands = [Item(image=_photo((800, 500), i)) for i in range(3)]
    with _qwen(tiny_qwen2vl, n_batch=64) as s:
        assert _image_tokens(s, photo.image) > 64
        for query, candidates in [(photo, vlm_captions[:3]), (Item(text=vlm_captions[0]), cands)]:
            fast = s.score_pairs(query, candidates, enhance="always")
            naive = s.score_pairs(query, candidates, enhance="always", fast=False)
            assert [(a.p_true, a.entropy) for a in fast] == [(b.p_true, b.entropy) for b in naive]
            assert all(0 < a.p_true < 1 for a in fast)


def test_non_causal_images_still_need_one_batch(tiny_vlm_f16, vlm_images):
    """Gemma3 attends over an image's tokens both ways: they must share one ubatch."""
    with LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, n_batch=8, n_threads=1) as s:
        for fast in (True, False):
            with pytest.raises(BadInput) as exc:
                s.score_pairs(Item(image=vlm_images[0]), ["a dog"], fast=fast)
            assert "--n-batch 16" in str(exc.value) and len(str(exc.value).splitlines()) == 1
        assert 0 < s.score_pairs("a cat", ["a dog"])[0].p_true < 1  # text still fits 8 at a time


def test_search_and_eval_share_the_runtime_options():
    def options(name: str) -> dict:
        cmd = cli.commands[name]
        return {p.name: (p.default, p.help, str(p.type)) for p in cmd.params if p.name in RUNTIME}

    RUNTIME = {"threads", "n_ctx", "n_batch", "max_image_tokens"}
    assert set(options("search")) == RUNTIME
    assert options("search") == options("eval")
    assert not isinstance(options("search")["n_ctx"][0], int)  # sized from the prompt unless given
