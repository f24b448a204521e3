"""``retllm search --rerank``: the two-stage pipeline end to end (tiny CLIP + tiny Gemma3 VLM)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from retllm_lite.cli import cli
from retllm_lite.index.store import Index
from retllm_lite.pipeline import RerankOptions, Retriever
from retllm_lite.rerank.scorer import Item, Scorer, rank_order
from torch_free import run_without_torch

CAPTIONS = [
    "a red circle on a blue background",
    "two green squares next to each other",
    "a yellow triangle in the corner",
    "an orange ellipse over grey stripes",
    "a purple rectangle and a white dot",
    "three small black circles in a row",
]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_clip_dir):
    from clip_fixtures import make_photo_folder

    root = tmp_path_factory.mktemp("rerank-corpus")
    make_photo_folder(root / "photos", 8, start_seed=40)
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    index_dir = root / "idx"
    res = CliRunner().invoke(
        cli,
        [
            "index",
            str(root / "photos"),
            "--texts",
            str(root / "captions.txt"),
            "--index",
            str(index_dir),
            "--clip-model",
            str(tiny_clip_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    return root, index_dir


@pytest.fixture(scope="module")
def vlm_dir(tiny_vlm_f16):
    return tiny_vlm_f16.directory


def search_json(index_dir, *args):
    res = run("search", *args, "--index", index_dir, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_rerank_reorders_the_coarse_top_k_by_the_paper_rule(corpus, vlm_dir):
    _root, index_dir = corpus
    coarse = search_json(index_dir, "a red circle", "-k", "5", "--modality", "image")
    reranked = search_json(
        index_dir,
        "a red circle",
        "--rerank",
        "--vlm-model",
        vlm_dir,
        "--modality",
        "image",
        "--enhance",
        "off",
    )
    assert len(reranked) == 5  # the paper's default k
    assert {r["path"] for r in reranked} == {c["path"] for c in coarse}
    for r in reranked:
        assert {"clip_score", "p_true", "p_false", "entropy", "enhanced", "coarse_rank"} <= set(r)
        assert r["enhanced"] is False and 0 <= r["p_true"] <= 1 and 0 <= r["entropy"] <= 1
        coarse_row = next(c for c in coarse if c["path"] == r["path"])
        assert (
            r["clip_score"] == pytest.approx(coarse_row["score"]) and r["coarse_rank"] == coarse_row["rank"]
        )
    keys = [(-(int(r["p_true"] * 100) / 100), r["vocab_entropy"]) for r in reranked]  # the authors' rule
    assert keys == sorted(keys) and [r["rank"] for r in reranked] == [1, 2, 3, 4, 5]
    assert all(r["score"] == int(r["p_true"] * 100) / 100 for r in reranked)


def test_rerank_depth_apart_from_the_results_shown(corpus, vlm_dir):
    """--rerank-k 3 -k 6: three reranked, then coarse ranks 4-6 in CLIP order; stable JSON rows."""
    _root, index_dir = corpus
    coarse = search_json(index_dir, "a red circle", "-k", "6", "--modality", "image")
    common = ["--rerank", "--vlm-model", vlm_dir, "--modality", "image", "--enhance", "off"]
    rows = search_json(index_dir, "a red circle", *common, "--rerank-k", "3", "-k", "6")
    assert len(rows) == 6 and [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {r["path"] for r in rows[:3]} == {c["path"] for c in coarse[:3]}
    assert [r["path"] for r in rows[3:]] == [c["path"] for c in coarse[3:]]  # CLIP order
    assert all(r["p_true"] is not None for r in rows[:3]) and all(r["p_true"] is None for r in rows[3:])
    assert len({tuple(r) for r in rows}) == 1  # every row has the same keys; absent ones are null
    assert {"p_true", "p_false", "entropy", "vocab_entropy", "enhanced", "item_id", "text"} <= set(rows[0])
    # -k below the depth shows the best of the reranked; --rerank-k alone needs --rerank
    top2 = search_json(index_dir, "a red circle", *common, "--rerank-k", "3", "-k", "2")
    assert [r["path"] for r in top2] == [r["path"] for r in rows[:2]]
    bad = run("search", "a red circle", "--rerank-k", "3", "--index", index_dir)
    assert bad.exit_code == 2 and "--rerank-k" in bad.output
    for flags in (["--gate", "0.5"], ["--gate-signal", "top10"]):
        bad = run("search", "a red circle", *common, *flags, "--index", index_dir)
        assert bad.exit_code == 2 and "only apply to --enhance gated" in bad.output


def test_the_index_is_opened_before_the_vlm_is_loaded(tmp_path, vlm_dir):
    """A missing index fails fast, naming the index, before any VLM is loaded or pulled."""
    res = run(
        "search", "a dog", "--rerank", "--vlm-model", tmp_path / "no-such-vlm", "--index", tmp_path / "none"
    )
    assert res.exit_code == 1 and "no-such-vlm" not in res.stderr and str(tmp_path / "none") in res.stderr


def test_pipeline_scores_equal_the_scorer_on_the_same_pairs(corpus, vlm_dir, tiny_clip_dir):
    _root, index_dir = corpus
    with (
        Scorer.from_manifest(vlm_dir, n_threads=1) as scorer,
        Retriever(Index.open(index_dir), scorer=scorer) as r,
    ):
        hits = r.search(
            text="two green squares", k=4, modality="image", rerank=RerankOptions(k=4, enhance="off")
        )
        direct = scorer.predict([("two green squares", Item(image=h.path)) for h in hits], enhance="off")
    for h, s in zip(hits, direct, strict=True):
        assert h.p_true == pytest.approx(s.p_true, rel=1e-6) and h.entropy == pytest.approx(
            s.entropy, rel=1e-6
        )
    order = rank_order(direct, rule="paper")
    assert [i for i, _ in order] == list(range(len(hits)))  # already in rule order


def test_image_to_text_pointwise_and_listwise(corpus, vlm_dir):
    root, index_dir = corpus
    photo = sorted((root / "photos").rglob("*.jpg"))[0]
    pointwise = search_json(
        index_dir,
        "--image",
        photo,
        "--modality",
        "text",
        "--rerank",
        "--vlm-model",
        vlm_dir,
        "-k",
        "4",
        "--rerank-k",
        "4",
        "--enhance",
        "always",
    )
    assert len(pointwise) == 4 and all(r["modality"] == "text" and r["enhanced"] is True for r in pointwise)
    listwise = search_json(
        index_dir,
        "--image",
        photo,
        "--modality",
        "text",
        "--listwise",
        "--vlm-model",
        vlm_dir,
        "--rerank-k",
        "4",
    )
    assert {r["text"] for r in listwise} == {r["text"] for r in pointwise}
    probs = [r["score"] for r in listwise]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
    # the listwise pick is the digit-logit argmax the backend reports
    with Scorer.from_manifest(vlm_dir, n_threads=1) as scorer:
        by_coarse = sorted(listwise, key=lambda r: r["coarse_rank"])
        pick = scorer.backend.pick_caption(photo, [r["text"] for r in by_coarse])
    assert by_coarse[pick.index]["text"] == listwise[0]["text"]
    bad = run("search", "words", "--listwise", "--vlm-model", vlm_dir, "--index", index_dir)
    assert bad.exit_code == 1 and "listwise reranking is for an image query" in bad.stderr


def test_explain_table_and_gated_enhancement(corpus, vlm_dir):
    _root, index_dir = corpus
    res = run(
        "search",
        "a yellow triangle",
        "--rerank",
        "--explain",
        "--vlm-model",
        vlm_dir,
        "--index",
        index_dir,
        "--modality",
        "image",
        "-k",
        "3",
        "--enhance",
        "gated",
        "--gate",
        "0.0",
    )
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0].split()
    assert header[:7] == ["#", "score", "coarse#", "clip", "P(True)", "entropy", "enh"]
    rows = res.stdout.splitlines()[1:]
    assert len(rows) == 3 and all(line.split()[6] == "True" for line in rows)  # gate 0: every pair fires
    # --explain says how the prompt was rendered: here the model's own Jinja template
    assert "chat template: the model's own (Jinja" in res.stderr
    none_fire = search_json(
        index_dir,
        "a yellow triangle",
        "--rerank",
        "--vlm-model",
        vlm_dir,
        "--modality",
        "image",
        "-k",
        "3",
        "--enhance",
        "gated",
        "--gate",
        "1.0",
    )
    assert all(r["enhanced"] is False for r in none_fire)
    assert run("search", "x", "--explain", "--index", index_dir).exit_code == 2


def test_bad_vlm_arguments_are_one_line(corpus, vlm_dir, tmp_path):
    _root, index_dir = corpus
    text_gguf = next(p for p in vlm_dir.iterdir() if p.suffix == ".gguf" and not p.name.startswith("mmproj"))
    cases = [
        (["--vlm-model", tmp_path / "nowhere"], "nowhere"),
        (["--vlm-model", text_gguf], "needs its projector"),
        (["--vlm-model", text_gguf, "--mmproj", text_gguf], "projector"),
        (["--offline"], "retllm models pull"),
    ]
    for extra, expected in cases:
        res = run("search", "a dog", "--rerank", *extra, "--index", index_dir)
        assert res.exit_code == 1, (extra, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (extra, lines)


def test_quantize_vlm_random_init_cli(vlm_converter, tmp_path):
    out = tmp_path / "vlm"
    res = run(
        "quantize",
        "vlm",
        "--random-init",
        "--type",
        "q8_0",
        "--out",
        out,
        "--llama-cpp",
        vlm_converter.root,
        "--json",
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert manifest["text"]["type"] == "q8_0" and manifest["mmproj"]["type"] == "f16"
    assert 0 <= manifest["smoke"]["p_true"] <= 1
    assert (out / manifest["text"]["file"]).is_file() and (out / "manifest.json").is_file()
    again = run("quantize", "vlm", "--random-init", "--out", out, "--llama-cpp", vlm_converter.root)
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_rerank_search_never_imports_torch(corpus, vlm_dir):
    _root, index_dir = corpus
    (out,) = run_without_torch(
        [
            "search",
            "a red circle",
            "--rerank",
            "--vlm-model",
            vlm_dir,
            "--index",
            index_dir,
            "--json",
            "-k",
            "2",
        ]
    )
    assert len(json.loads(out)) == 2


def test_paths_on_caption_hits_prints_their_ids_not_the_captions(corpus):
    root, index_dir = corpus
    photo = sorted((root / "photos").rglob("*.jpg"))[0]
    rows = search_json(index_dir, "--image", photo, "--modality", "text", "-k", "3")
    res = run("search", "--image", photo, "--modality", "text", "-k", "3", "--paths", "--index", index_dir)
    assert res.exit_code == 0
    want = [str(r["item_id"] if r["item_id"] is not None else r["id"]) for r in rows]
    assert res.stdout.splitlines() == want
    assert not any(r["text"] in res.stdout for r in rows)


def test_search_gates_on_the_papers_early_exit_trigger(corpus, vlm_dir):
    """--gate-signal exit-A-B: the backend captures those layers; the gate reads their entropy."""
    _root, index_dir = corpus
    common = ["a red circle", "--rerank", "--vlm-model", vlm_dir, "--modality", "image", "--rerank-k", "3"]
    fired = search_json(index_dir, *common, "--gate-signal", "exit-1-3", "--gate", "0")
    shut = search_json(index_dir, *common, "--gate-signal", "exit-1-3", "--gate", "1")
    assert [r["enhanced"] for r in fired] == [True] * 3  # every early exit has entropy > 0
    assert [r["enhanced"] for r in shut] == [False] * 3  # and none above 1
    bad = run("search", *common, "--gate-signal", "exit-x", "--index", index_dir)
    assert bad.exit_code == 2 and "exit-FIRST-LAST" in bad.output


def test_text_to_image_search_keeps_kv_states_of_its_candidates(corpus, vlm_dir):
    from retllm_lite.paths import cache_dir

    _root, index_dir = corpus
    common = [
        "--rerank",
        "--vlm-model",
        vlm_dir,
        "--modality",
        "image",
        "--rerank-k",
        "3",
        "--enhance",
        "off",
    ]
    states = cache_dir() / "rerank-states"
    assert search_json(index_dir, "a red circle", *common, "--kv-cache-mb", "0")
    assert not list(states.rglob("*.kv"))
    first = search_json(index_dir, "a red circle", *common)
    assert len(list(states.rglob("*.kv"))) == 3  # one state per reranked candidate image
    again = search_json(index_dir, "a red circle", *common)  # restored (f16 KV: equal to ~1e-4)
    assert {r["path"] for r in again} == {r["path"] for r in first}
    before = {r["path"]: r["p_true"] for r in first}
    assert all(abs(r["p_true"] - before[r["path"]]) < 1e-3 for r in again)


def test_prepare_rerank_caches_every_photo_once_and_resumes(corpus, vlm_dir):
    """retllm prepare-rerank: embeddings and KV states ahead of queries; a rerun recomputes nothing."""
    from retllm_lite.paths import cache_dir

    _root, index_dir = corpus
    args = ["prepare-rerank", "--index", index_dir, "--vlm-model", vlm_dir, "--threads", "1", "--json"]
    first = run(*args, "--limit", "5")  # an interrupted run, as far as the caches can tell
    assert first.exit_code == 0, first.output
    done = json.loads(first.stdout)
    assert done["photos"] == 5 and done["images_encoded"] == 5 and done["states_saved"] == 5
    full = json.loads(run(*args).stdout)
    n = full["photos"]
    assert n > 5 and full["images_encoded"] == n - 5 and full["embeddings_from_disk"] >= 5
    assert full["states_restored"] >= 5 and full["states_saved"] == n - 5
    again = json.loads(run(*args).stdout)
    assert again["images_encoded"] == 0 and again["states_saved"] == 0 and again["states_restored"] >= n
    assert len(list((cache_dir() / "rerank-states").rglob("*.kv"))) == n
    off = run(*args[:-1], "--kv-cache-mb", "0")
    assert off.exit_code == 2 and "--kv-cache-mb" in off.output


def test_a_slow_rerank_says_what_it_is_doing(corpus, vlm_dir, monkeypatch):
    from retllm_lite.cli import app

    _root, index_dir = corpus
    common = ["a red circle", "--rerank", "--vlm-model", vlm_dir, "--rerank-k", "2", "--index", index_dir]
    monkeypatch.setattr(app, "SLOW_AFTER_S", 0.0)  # every rerank counts as slow
    shown = run("search", *common, "--progress")
    assert shown.exit_code == 0 and "reranking the top 2 with the VLM" in shown.stderr
    assert "done in" in shown.stderr
    quiet = run("search", *common, "--no-progress")
    assert quiet.exit_code == 0 and "reranking the top" not in quiet.stderr
