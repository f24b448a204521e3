"""llama.cpp scores against transformers on the same token ids and images, and Q8_0 vs f16."""

from __future__ import annotations

import numpy as np
import pytest

from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
from retllm_lite.rerank.scorer import Item


def _parity(scorer, hf_reference, images, captions, enhanced):
    """Worst relative error of P(True) and P(False) over image -> caption pairs."""
    worst = 0.0
    for image in images:
        query = Item(image=image)
        mode = "always" if enhanced else "off"
        got = scorer.score_pairs(query, captions, enhance=mode)
        for caption, score in zip(captions, got, strict=True):
            assert score.enhanced is enhanced
            segments = scorer.layout(query, caption, enhanced=enhanced)
            n_images = sum(seg.kind == "image" for seg in segments)
            assert n_images == (2 if enhanced else 1)
            want = hf_reference(segments, [image] * n_images)
            for ours, theirs in ((score.p_true, want[scorer.true_id]),
                                 (score.p_false, want[scorer.false_id])):  # fmt: skip
                worst = max(worst, abs(ours - theirs) / theirs)
    return worst


@pytest.mark.parametrize("enhanced", [False, True], ids=["once", "image-twice"])
def test_f32_gguf_matches_transformers(f32_batched_scorer, hf_reference, vlm_images, vlm_captions, enhanced):
    # f32 weights, f32 projector, f32 KV cache: only kernel-level differences remain.
    worst = _parity(f32_batched_scorer, hf_reference, vlm_images[:3], vlm_captions[:3], enhanced)
    assert worst < 1e-3


@pytest.mark.parametrize("enhanced", [False, True], ids=["once", "image-twice"])
def test_f16_gguf_matches_transformers(f16_scorer, hf_reference, vlm_images, vlm_captions, enhanced):
    worst = _parity(f16_scorer, hf_reference, vlm_images[3:5], vlm_captions[3:5], enhanced)
    assert worst < 1e-2


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def test_q8_ranks_like_f16(tiny_vlm_q8, f16_scorer, vlm_images, vlm_captions):
    pairs = [(Item(image=im), vlm_captions) for im in vlm_images[:4]]  # image -> text
    pairs += [(Item(text=c), [Item(image=im) for im in vlm_images]) for c in vlm_captions[:3]]
    with LlamaMtmdScorer(tiny_vlm_q8.model, tiny_vlm_q8.mmproj, n_threads=1) as q8:
        a = [s.p_true for q, cands in pairs for s in f16_scorer.score_pairs(q, cands)]
        b = [s.p_true for q, cands in pairs for s in q8.score_pairs(q, cands)]
    assert len(a) >= 40
    assert np.ptp(a) > 0.2  # the pairs really differ
    rho = np.corrcoef(_ranks(np.array(a)), _ranks(np.array(b)))[0, 1]
    assert rho >= 0.99
