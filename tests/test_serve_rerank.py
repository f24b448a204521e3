"""The web API's rerank switch with the tiny VLM: the same reranked hits as
``retllm search --rerank --json``, with P(True), entropy, enhancement and rank movement."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from retllm_lite.cli import cli
from serve_fixtures import start


@pytest.fixture(scope="module")
def reranking(serve_corpus, tiny_vlm_f16):
    from retllm_lite.rerank.scorer import Scorer

    photos, index_dir = serve_corpus

    def factory():
        return Scorer.from_manifest(tiny_vlm_f16.directory, n_threads=1, embedding_cache=True)

    with start(photos, index_dir, scorer_factory=factory, vlm_name="tiny-gemma3") as s:
        yield s, tiny_vlm_f16.directory


@pytest.mark.parametrize("enhance", ["off", "always"])
def test_rerank_switch_matches_retllm_search_rerank(reranking, enhance):
    s, vlm_dir = reranking
    assert s.get_json("/api/status")["models"]["vlm"]["available"] is True
    api = s.get_json(f"/api/search?q={quote('a red circle')}&k=6&rerank=1&rerank_k=4&enhance={enhance}")
    assert api["reranked"] is True and api["query"]["enhance"] == enhance
    res = CliRunner().invoke(
        cli,
        [
            "search",
            "a red circle",
            "-k",
            "6",
            "--rerank",
            "--rerank-k",
            "4",
            "--enhance",
            enhance,
            "--vlm-model",
            str(vlm_dir),
            "--index",
            str(s.index_dir),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    want = json.loads(res.stdout)
    assert [h["id"] for h in api["hits"]] == [h["id"] for h in want]
    for a, c in zip(api["hits"], want, strict=True):
        for key in ("rank", "coarse_rank", "enhanced"):
            assert a[key] == c[key], key
        for key in ("score", "clip_score", "p_true", "entropy"):
            assert a[key] == pytest.approx(c[key], abs=1e-4) if c[key] is not None else a[key] is None
    head, tail = api["hits"][:4], api["hits"][4:]
    assert all(h["p_true"] is not None and 0 <= h["entropy"] <= 1 for h in head)
    assert all(h["enhanced"] is (enhance == "always") for h in head)
    assert all(h["moved"] == h["coarse_rank"] - h["rank"] for h in head)
    assert all(h["p_true"] is None and h["moved"] is None for h in tail)
    assert sorted(h["coarse_rank"] for h in head) == [1, 2, 3, 4]
    assert s.get_json("/api/status")["models"]["vlm"]["loaded"] is True


def test_rerank_an_image_query_more_like_this_and_upload(reranking):
    s, vlm_dir = reranking
    first = s.get_json("/api/search?q=x&k=1")["hits"][0]
    api = s.get_json(f"/api/search?like={first['id']}&k=4&rerank=1&rerank_k=3&enhance=off")
    res = CliRunner().invoke(
        cli,
        [
            "search",
            "--image",
            first["path"],
            "-k",
            "4",
            "--rerank",
            "--rerank-k",
            "3",
            "--enhance",
            "off",
            "--vlm-model",
            str(vlm_dir),
            "--index",
            str(s.index_dir),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    want = json.loads(res.stdout)
    assert [h["id"] for h in api["hits"]] == [h["id"] for h in want]
    assert [h["p_true"] for h in api["hits"][:3]] == pytest.approx([h["p_true"] for h in want[:3]], abs=1e-4)
    assert api["hits"][3]["p_true"] is None and want[3]["p_true"] is None
    data = Path(first["path"]).read_bytes()
    _status, up = s.post_image(
        "/api/search", {"k": "4", "rerank": "1", "rerank_k": "3", "enhance": "off"}, data
    )
    assert up["reranked"] and all(h["p_true"] is not None for h in up["hits"][:3])
    assert first["id"] in {h["id"] for h in up["hits"][:3]}  # it found itself, then was reranked
