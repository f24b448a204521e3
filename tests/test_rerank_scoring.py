"""LlamaMtmdScorer on the tiny Gemma3: fast path vs naive path, enhancement, ranking, caches."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from retllm_lite.rerank.embedding_cache import EmbeddingCache, cache_namespace
from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
from retllm_lite.rerank.scorer import Enhance, Item, Scorer, rank_order
from vlm_fixtures import photo

TOL = 1e-4


def _assert_same(fast, naive):
    assert len(fast) == len(naive)
    for a, b in zip(fast, naive, strict=True):
        assert a.enhanced == b.enhanced
        assert abs(a.p_true - b.p_true) < TOL
        assert abs(a.p_false - b.p_false) < TOL
        assert abs(a.entropy - b.entropy) < TOL
        assert (a.first_pass is None) == (b.first_pass is None)


def _cases(images, captions):
    """(query, candidates) for each pairing the fast path handles differently."""
    return {
        "image->text": (Item(image=images[0]), captions),  # shared prefix holds the image
        "text->image": (Item(text=captions[1]), [Item(image=im) for im in images[:9]]),
        "image->image": (Item(image=images[1]), [Item(image=im) for im in images[2:8]]),
        "image+text->image": (
            Item(text="make it blue", image=images[2]),
            [Item(image=im) for im in images[3:8]],
        ),
        "text->image+text": (
            Item(text=captions[2]),
            [Item(text=c, image=im) for c, im in zip(captions[:5], images[5:], strict=False)],
        ),
        "text->text": (Item(text=captions[3]), captions[:6]),
    }


@pytest.mark.parametrize("enhance", ["off", "always", "gated:0.3"])
def test_fast_path_is_bit_identical_to_naive_path(f16_scorer, vlm_images, vlm_captions, enhance):
    for name, (query, cands) in _cases(vlm_images, vlm_captions).items():
        fast = f16_scorer.score_pairs(query, cands, enhance=enhance, fast=True)
        naive = f16_scorer.score_pairs(query, cands, enhance=enhance, fast=False)
        assert all(0 < s.p_true < 1 and 0 < s.entropy < 1 for s in fast), name
        _assert_same(fast, naive)
        # One candidate at a time: same kernels, same KV layout, so the very same floats.
        assert [(s.p_true, s.p_false, s.entropy) for s in fast] == [
            (s.p_true, s.p_false, s.entropy) for s in naive
        ], name
        if enhance == "always":
            has_image = query.has_image or any(Item.coerce(c).has_image for c in cands)
            assert all(s.enhanced is has_image for s in fast), name


@pytest.fixture(scope="module", params=["tiny_qwen2vl", "tiny_smolvlm"])
def other_family_scorer(request):
    files = request.getfixturevalue(request.param)
    with LlamaMtmdScorer(files.model, files.mmproj, n_threads=1) as scorer:
        yield scorer


@pytest.mark.parametrize("enhance", ["off", "always"])
def test_other_families_fast_path_is_bit_identical_to_naive_path(
    other_family_scorer, vlm_images, vlm_captions, enhance
):
    """Qwen2-VL (the default family) and SmolVLM, as the Gemma3 test above.

    Qwen2-VL: M-RoPE image positions survive the prefix copy and the cached embeddings; two
    of the pictures are not square (16 x 22 and 17 x 28 tokens), so an image's 2-D positions
    and the text after it (from its largest position + 1) differ from 1-D ones. SmolVLM:
    each picture is several image chunks (tiles and an overview) with text between them.
    """
    scorer = other_family_scorer
    images = [photo((448, 616), 0), photo((500, 800), 1), *vlm_images[2:6]]
    for name, (query, cands) in _cases(images, vlm_captions[:5]).items():
        fast = scorer.score_pairs(query, cands, enhance=enhance, fast=True)
        naive = scorer.score_pairs(query, cands, enhance=enhance, fast=False)
        assert all(0 < s.p_true < 1 and 0 < s.entropy < 1 for s in fast), name
        assert len({s.p_true for s in fast}) == len(fast), name  # the candidates really differ
        assert [(s.p_true, s.p_false, s.entropy, s.enhanced) for s in fast] == [
            (s.p_true, s.p_false, s.entropy, s.enhanced) for s in naive
        ], name


@pytest.mark.parametrize("enhance", ["off", "always", "gated:0.3"])
def test_batched_fast_path_equals_naive_path(f32_batched_scorer, vlm_images, vlm_captions, enhance):
    scorer = f32_batched_scorer  # batch_size 3: 6..9 candidates need 2-3 batched decodes
    fired = 0
    for query, cands in _cases(vlm_images, vlm_captions).values():
        fast = scorer.score_pairs(query, cands, enhance=enhance)
        naive = scorer.score_pairs(query, cands, enhance=enhance, fast=False)
        _assert_same(fast, naive)
        fired += sum(s.enhanced for s in fast)
    assert fired > 0 if enhance != "off" else fired == 0


def test_candidates_are_scored_independently_of_their_batch(f32_batched_scorer, vlm_images, vlm_captions):
    query = Item(image=vlm_images[4])
    together = f32_batched_scorer.score_pairs(query, vlm_captions)
    alone = [f32_batched_scorer.score_pairs(query, [c])[0] for c in reversed(vlm_captions)][::-1]
    _assert_same(together, alone)


def test_fast_path_encodes_each_image_once_and_reuses_the_prefix(tiny_vlm_f16, vlm_images, vlm_captions):
    with LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, batch_size=3, n_threads=1) as s:
        query = Item(text=vlm_captions[0])
        cands = [Item(image=im) for im in vlm_images[:6]] + [Item(image=vlm_images[0])]
        s.score_pairs(query, cands, enhance="always")  # each image appears twice per prompt
        assert s.stats.images_encoded == 6
        before = s.stats.prefix_units_evaluated
        again = s.score_pairs(query, cands, enhance="always")
        assert s.stats.images_encoded == 6  # all from memory
        assert s.stats.prefix_units_evaluated == before  # the shared prefix was kept
        assert s.stats.prefix_units_reused > 0
        naive = s.score_pairs(query, cands, enhance="always", fast=False)
        assert s.stats.images_encoded == 6 + 2 * len(cands)  # naive encodes every occurrence
        _assert_same(again, naive)


def test_disk_embedding_cache_round_trip(tiny_vlm_f16, vlm_images, vlm_captions, tmp_path):
    cache = tmp_path / "emb"
    query = Item(text=vlm_captions[5])
    cands = [Item(image=im) for im in vlm_images[:4]]
    with LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, embedding_cache=cache,
                         n_threads=1) as first:  # fmt: skip
        want = first.score_pairs(query, cands)
        assert first.stats.images_encoded == 4
    files = sorted(cache.rglob("*.npz"))
    assert len(files) == 4 and not list(cache.rglob(".tmp-*"))
    files[0].write_bytes(b"not an npz")  # a damaged entry is a miss, then rewritten
    with LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, embedding_cache=cache,
                         n_threads=1) as second:  # fmt: skip
        got = second.score_pairs(query, cands)
        assert second.stats.embedding_disk_hits == 3
        assert second.stats.images_encoded == 1
    _assert_same(got, want)


def test_default_disk_cache_lives_under_the_cache_dir(tiny_vlm_f16, vlm_images, isolated_dirs):
    with LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, embedding_cache=True,
                         n_threads=1) as s:  # fmt: skip
        s.score_pairs(Item(image=vlm_images[0]), ["a dog"])
        assert isinstance(s._disk, EmbeddingCache)
        settings = s.rt.image_settings()
    root = isolated_dirs / "cache" / "retllm-lite" / "image-embeddings"
    assert len(list(root.rglob("*.npz"))) == 1
    # keyed by the projector's sha256 and the runtime settings that shape its output
    sha = tiny_vlm_f16.manifest["mmproj"]["sha256"]
    assert next(root.iterdir()).name == cache_namespace(sha, settings)
    assert cache_namespace(sha, settings).startswith(sha[:16] + "-")


@pytest.mark.parametrize("signal", ["binary", "top10"])
def test_gated_enhancement_fires_exactly_above_the_threshold(f16_scorer, vlm_images, vlm_captions, signal):
    for query, cands in [
        (Item(text=vlm_captions[0]), [Item(image=im) for im in vlm_images]),
        (Item(image=vlm_images[6]), vlm_captions),
    ]:
        first = f16_scorer.score_pairs(query, cands, enhance="off")
        always = f16_scorer.score_pairs(query, cands, enhance="always")
        values = sorted(Enhance("gated", signal=signal).gate_value(s) for s in first)
        threshold = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
        mode = Enhance("gated", threshold, signal)
        for fast in (True, False):
            gated = f16_scorer.score_pairs(query, cands, enhance=mode, fast=fast)
            fired = [s.enhanced for s in gated]
            assert fired == [mode.gate_value(s) > threshold for s in first]
            assert 0 < sum(fired) < len(fired)
            for g, f, a in zip(gated, first, always, strict=True):
                if g.enhanced:
                    assert g.first_pass is not None
                    assert abs(g.first_pass.entropy - f.entropy) < TOL
                    assert abs(g.first_pass.p_true - f.p_true) < TOL
                    assert abs(g.p_true - a.p_true) < TOL
                else:
                    assert g.first_pass is None
                    assert abs(g.p_true - f.p_true) < TOL


def test_default_gate_fires_when_unsure_and_stays_shut_when_confident(
    f16_scorer, confident_scorer, vlm_images, vlm_captions
):
    """The default gate (binary entropy > 0.75) on real logits, not on hand-made numbers.

    The plain tiny model spreads P(True)/(P(True)+P(False)) around 0.5 (unsure pairs); the
    confident one puts it near 0.95. The final layer's top-10 entropy stays far below 0.75
    on both, so a 0.75 gate on it (the earlier default) never fires.
    """
    pairs = [
        (Item(text=vlm_captions[0]), [Item(image=im) for im in vlm_images]),
        (Item(image=vlm_images[6]), vlm_captions),
    ]
    unsure, confident = [], []
    for scorer, out in ((f16_scorer, unsure), (confident_scorer, confident)):
        for query, cands in pairs:
            first = scorer.score_pairs(query, cands, enhance="off")
            gated = scorer.score_pairs(query, cands, enhance="gated")
            out += list(zip(first, gated, strict=True))
    for first, gated in unsure + confident:
        assert gated.enhanced is (first.binary_entropy > 0.75)
        assert first.entropy < 0.75 and not Enhance("gated", signal="top10").fires(first)
    near_even = [g for f, g in unsure if 0.35 <= f.score <= 0.65]
    assert near_even and all(g.enhanced for g in near_even)
    assert all(not g.enhanced and f.score > 0.785 for f, g in confident)
    assert any(f.score >= 0.95 for f, _ in confident)


def test_paper_rule_through_the_model_breaks_rounded_ties_by_entropy(f16_scorer, vlm_images, vlm_captions):
    scorer = Scorer(f16_scorer)
    query = Item(image=vlm_images[7])
    cands = [f"{a} {b}" for a in vlm_captions for b in ("", "at night", "in the snow")]
    ranked = scorer.rank(query, cands)
    raw = f16_scorer.score_pairs(query, cands)
    assert [r.corpus_id for r in ranked] == [i for i, _ in rank_order(raw, rule="paper")]
    assert sorted(r.corpus_id for r in ranked) == list(range(len(cands)))
    keys = [(-(int(r.p_true * 100) / 100), r.vocab_entropy) for r in ranked]  # the authors' code
    assert keys == sorted(keys)
    ties = [(a, b) for a, b in itertools.pairwise(ranked) if int(a.p_true * 100) == int(b.p_true * 100)]
    assert ties, "the candidates should include truncated ties"
    assert any(a.p_true < b.p_true for a, b in ties)  # lower entropy won over higher P(True)
    assert [r.score for r in ranked] == [int(r.p_true * 100) / 100 for r in ranked]
    assert [r.corpus_id for r in scorer.rank(query, cands, rule="raw")] == sorted(
        range(len(cands)), key=lambda i: -raw[i].p_true
    )
    top = scorer.rank(query, cands, top_k=3)
    assert [r.as_dict()["corpus_id"] for r in top] == [r.corpus_id for r in ranked[:3]]


def test_scorer_predict_groups_pairs_by_query(f16_scorer, vlm_images, vlm_captions):
    scorer = Scorer(f16_scorer, enhance="off")
    q1, q2 = Item(image=vlm_images[0]), Item(text=vlm_captions[0])
    pairs = [(q1, vlm_captions[0]), (q2, Item(image=vlm_images[1])), (q1, vlm_captions[1])]
    got = scorer.predict(pairs)
    want1 = f16_scorer.score_pairs(q1, vlm_captions[:2])
    want2 = f16_scorer.score_pairs(q2, [Item(image=vlm_images[1])])
    _assert_same(got, [want1[0], want2[0], want1[1]])
    single = scorer.predict((q1, vlm_captions[1]))
    _assert_same([single], [want1[1]])


def test_listwise_pick_is_read_from_digit_logits(f32_batched_scorer, hf_reference, vlm_images, vlm_captions):
    s = f32_batched_scorer
    for image, k in [(vlm_images[0], 5), (vlm_images[3], 8)]:
        captions = vlm_captions[:k]
        pick = s.pick_caption(image, captions)
        digits = s.choice_tokens(k)
        assert [s.rt.token_text(t) for t in digits] == [str(i + 1) for i in range(k)]
        segments = s.listwise_layout(image, captions)
        probs = hf_reference(segments, [image])[digits]
        probs = probs / probs.sum()
        assert pick.index == int(np.argmax(probs))
        assert np.allclose(pick.probs, probs, rtol=0, atol=1e-3)
        assert sum(pick.probs) == pytest.approx(1.0)


def test_images_are_decoded_upright_as_rgb(f16_scorer, vlm_images, tmp_path):
    upright = vlm_images[5]
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: the viewer turns the stored pixels 90 degrees left
    upright.rotate(-90).save(path, exif=exif, quality=100, subsampling=0)
    stored = Image.open(path)
    stored.load()
    # What a viewer shows, as a new image without the EXIF tag.
    shown = Image.fromarray(np.asarray(stored.transpose(Image.Transpose.ROTATE_90)))

    def p_true(image):
        return f16_scorer.score_pairs(Item(image=image), ["a red car"])[0].p_true

    assert abs(p_true(path) - p_true(shown)) < TOL
    sideways = Image.fromarray(np.asarray(stored))
    assert abs(p_true(path) - p_true(sideways)) > 10 * TOL  # orientation matters here
    gray_alpha = upright.convert("LA")
    png = tmp_path / "gray.png"
    gray_alpha.save(png)
    assert abs(p_true(png) - p_true(gray_alpha.convert("RGB"))) < TOL


def test_search_path_does_not_import_torch():
    code = (
        "import sys, retllm_lite.rerank.llama_mtmd, retllm_lite.rerank.scorer, "
        "retllm_lite.rerank.manifest; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scorer_from_manifest(tiny_vlm_f16, vlm_images):
    with Scorer.from_manifest(tiny_vlm_f16.directory, verify=True, enhance="gated", n_threads=1) as scorer:
        ranked = scorer.rank("a dog", [Item(image=im, id=f"img{i}") for i, im in enumerate(vlm_images[:3])])
        assert sorted(r.id for r in ranked) == ["img0", "img1", "img2"]
        assert scorer.enhance.mode == "gated" and scorer.enhance.threshold == 0.75
    assert scorer.backend.rt.closed


def test_one_scorer_seam(f16_scorer, vlm_images, vlm_captions, tmp_path):
    """Backends return passes; gating and the rule live in the model-agnostic modules, once."""
    # no import circle: the llama.cpp backend does not import Scorer, Scorer does not import it
    code = (
        "import sys, retllm_lite.rerank.llama_mtmd; assert 'retllm_lite.rerank.scorer' not in sys.modules; "
        "import retllm_lite.rerank.scorer"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, retllm_lite.rerank.scorer; assert 'retllm_lite.rerank.llama_mtmd' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    # the factory picks the backend by the manifest's format, as ENCODERS does for CLIP
    from retllm_lite.errors import BadModelFile
    from retllm_lite.rerank.backend import BACKENDS, load_backend

    assert list(BACKENDS) == ["retllm-lite/vlm-gguf"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "someone/else"}')
    with pytest.raises(BadModelFile, match="no fine-stage backend for format 'someone/else'"):
        load_backend(other)
    # Scorer gates over the backend's passes with the same decision its score_pairs makes
    q = Item(image=vlm_images[2])
    values = sorted(Enhance("gated").gate_value(a) for a in f16_scorer.answer_probs(q, vlm_captions))
    mode = f"gated:{(values[3] + values[4]) / 2}"
    via_scorer = Scorer(f16_scorer, enhance=mode).predict([(q, c) for c in vlm_captions])
    direct = f16_scorer.score_pairs(q, vlm_captions, enhance=mode)
    assert [(s.p_true, s.enhanced) for s in via_scorer] == [(s.p_true, s.enhanced) for s in direct]
    assert 0 < sum(s.enhanced for s in direct) < len(direct)


def test_kv_states_of_candidate_images_are_reused_across_queries(
    tiny_vlm_f32, vlm_images, vlm_captions, tmp_path
):
    """Text -> image: header + candidate image decoded once, restored for every later query."""
    from retllm_lite.rerank.state_cache import StateCache

    root = tmp_path / "states"
    cands = [Item(image=im) for im in vlm_images[:4]]
    kwargs = {"kv_type": "f32", "n_ctx": 1024, "n_threads": 1}
    with LlamaMtmdScorer(tiny_vlm_f32.model, tiny_vlm_f32.mmproj, **kwargs,
                         state_cache=StateCache("t", root=root)) as sc:  # fmt: skip
        sc.answer_probs(Item(text=vlm_captions[0]), cands)
        assert (sc.stats.states_saved, sc.stats.states_restored) == (4, 0)
        second = sc.answer_probs(Item(text=vlm_captions[1]), cands)
        enhanced = sc.answer_probs(Item(text=vlm_captions[1]), cands, enhanced=True)
        assert (sc.stats.states_saved, sc.stats.states_restored) == (4, 8)  # the same heads
        naive = [sc.answer_probs(Item(text=vlm_captions[1]), [c], fast=False)[0] for c in cands]
        naive_enh = [
            sc.answer_probs(Item(text=vlm_captions[1]), [c], enhanced=True, fast=False)[0] for c in cands
        ]
    for got, want in [*zip(second, naive, strict=True), *zip(enhanced, naive_enh, strict=True)]:
        assert abs(got.p_true - want.p_true) < 1e-4 and abs(got.p_false - want.p_false) < 1e-4
    assert len(list(root.glob("*.kv"))) == 4
    # another scorer (as a later process) restores them from disk; a corrupt file is a miss
    victim = sorted(root.glob("*.kv"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    with LlamaMtmdScorer(tiny_vlm_f32.model, tiny_vlm_f32.mmproj, **kwargs,
                         state_cache=StateCache("t", root=root)) as sc:  # fmt: skip
        again = sc.answer_probs(Item(text=vlm_captions[1]), cands)
        assert (sc.stats.states_restored, sc.stats.states_saved) == (3, 1)
    for got, want in zip(again, naive, strict=True):
        assert abs(got.p_true - want.p_true) < 1e-4


def test_other_families_kv_states_cover_the_whole_candidate_image(
    other_family_scorer, vlm_images, vlm_captions, tmp_path
):
    """Qwen2-VL and SmolVLM: a warm text -> image query restores header + every chunk of the image.

    SmolVLM tiles a picture (one chunk a tile, row/column marker text between them): the saved
    head must end after the last tile, or every later query decodes the other tiles again.
    Scores after a restore equal the naive path's (f32 GGUF, f16 KV: 1e-4).
    """
    from retllm_lite.rerank.state_cache import StateCache

    sc = other_family_scorer
    cands = [Item(image=im) for im in vlm_images[:3]]
    sc.clear_caches()
    sc.state_cache = StateCache("fam", root=tmp_path / "states")
    try:
        sc.answer_probs(Item(text=vlm_captions[0]), cands)
        chunks = [sum(s.kind == "image" for s in sc.layout(Item(text=vlm_captions[1]), c)) for c in cands]
        if sc.rt.mmproj_info.metadata.get("clip.projector_type") == "idefics3":
            assert max(chunks) > 1  # the case this test is for: tiled pictures
        before = (sc.stats.states_restored, sc.stats.image_runs_decoded)
        warm = sc.answer_probs(Item(text=vlm_captions[1]), cands)
        assert sc.stats.states_restored - before[0] == len(cands)
        assert sc.stats.image_runs_decoded == before[1]  # no image chunk decoded again
        enhanced = sc.answer_probs(Item(text=vlm_captions[1]), cands, enhanced=True)
        assert sc.stats.image_runs_decoded - before[1] == sum(chunks)  # only the re-inserted copies
    finally:
        sc.state_cache = None
    naive = [sc.answer_probs(Item(text=vlm_captions[1]), [c], fast=False)[0] for c in cands]
    naive_enh = [
        sc.answer_probs(Item(text=vlm_captions[1]), [c], enhanced=True, fast=False)[0] for c in cands
    ]
    for got, want in [*zip(warm, naive, strict=True), *zip(enhanced, naive_enh, strict=True)]:
        assert abs(got.p_true - want.p_true) < 1e-4 and abs(got.p_false - want.p_false) < 1e-4
