"""``retllm eval`` end to end on generated datasets with the tiny random CLIP and VLM.

The models are random, so the rankings mean nothing: these tests check what holds
whatever the weights. Recall is recomputed here by brute force from the run's own vectors
and scores; the second run must compute nothing (real counters: the runner's and
llama.cpp scorer's); gated enhancement fires exactly above the threshold, as the backend's
own gating does; listwise picks are valid positions; the files and JSON are complete.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from eval_data import save_images, scenes, write_jsonl, write_karpathy
from retllm_lite.cli import cli
from retllm_lite.encode import load_encoder
from retllm_lite.eval.cache import EvalCache
from retllm_lite.eval.datasets import load_dataset
from retllm_lite.eval.protocol import Settings
from retllm_lite.eval.report import markdown, text_table, write_outputs
from retllm_lite.eval.runner import Evaluator
from retllm_lite.rerank.scorer import Item

N_IMAGES = 8  # one of them missing, one unreadable: 6 evaluated, 12 captions


@pytest.fixture(scope="module")
def dataset_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    items = scenes(N_IMAGES)
    images = root / "flickr30k-images"
    names = save_images(images, items)
    (images / names[5]).unlink()
    (images / names[6]).write_bytes(b"\xff\xd8\xff not really a jpeg")
    path = write_karpathy(
        root / "dataset_flickr30k.json", names, [s.captions for s in items], ["test"] * N_IMAGES
    )
    return path, images


@pytest.fixture(scope="module")
def runs(dataset_files, tiny_clip_dir, f16_scorer, tmp_path_factory):
    """Run 1: off and always. Run 2 adds gated at the median first-pass entropy."""
    path, images = dataset_files
    work = tmp_path_factory.mktemp("eval-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETLLM_CACHE_DIR", str(work / "cache"))  # sha256 stamps stay in the sandbox
        encoder = load_encoder(tiny_clip_dir, threads=1)
        ds = load_dataset(path, images=images)
        cache = EvalCache(work / "eval.sqlite3")
        first = Evaluator(encoder, f16_scorer, cache=cache)
        r1 = first.run(ds, Settings(ks=(2, 3), enhance=("off", "always"), listwise=True))
        # the default gate signal: the True/False decision's normalised entropy
        entropies = [s.binary_entropy for d in ("t2i", "i2t") for row in first.tables[d][1] for s in row if s]
        gate = round(statistics.median(entropies), 6)
        prompts_before = f16_scorer.stats.prompts_scored
        second = Evaluator(encoder, f16_scorer, cache=cache)
        settings = Settings(ks=(2, 3), enhance=("off", f"gated:{gate}", "always"), listwise=True)
        r2 = second.run(ds, settings)
        prompts_second = f16_scorer.stats.prompts_scored - prompts_before
    return {
        "first": first,
        "second": second,
        "r1": r1,
        "r2": r2,
        "gate": gate,
        "prompts_second": prompts_second,
        "dataset": second.dataset,  # as evaluated: without the unreadable image
    }


def test_missing_and_unreadable_images_are_counted_and_skipped(runs):
    r = runs["r2"]
    assert r.dataset["skipped"] == {"missing": 1, "unreadable": 1}
    assert r.dataset["images"] == N_IMAGES - 2 and r.dataset["captions"] == 2 * (N_IMAGES - 2)
    unreadable = [f for f in r.dataset["skipped_files"] if f["reason"] == "unreadable"]
    assert unreadable[0]["path"].endswith("img006.jpg") and unreadable[0]["detail"]


def test_second_run_with_one_more_configuration_computes_nothing(runs):
    first, second = runs["first"].stats, runs["second"].stats
    n, captions = N_IMAGES - 2, 2 * (N_IMAGES - 2)
    assert (first.images_embedded, first.texts_embedded) == (n, captions)
    assert first.pairs_scored > 0 and first.listwise_scored == n * 2
    assert (second.images_embedded, second.texts_embedded) == (0, 0)
    assert (second.image_vectors_cached, second.text_vectors_cached) == (n, captions)
    # gated is composed from the cached plain and enhanced passes: no VLM prompt at all
    assert second.pairs_scored == 0 and second.listwise_scored == 0
    assert runs["prompts_second"] == 0  # llama.cpp's own counter
    assert second.pair_scores_cached == first.pairs_scored
    assert second.listwise_cached == n * 2
    # the configurations both runs have give the same numbers
    for res in runs["r1"].results:
        assert runs["r2"].result(res.name).recall == res.recall


def test_gated_fires_exactly_above_the_threshold_like_the_backend(runs, f16_scorer):
    ev, gate = runs["second"], runs["gate"]
    fired = kept = 0
    for d in ("t2i", "i2t"):
        for row in ev.scores(d, 3, f"gated:{gate}"):
            for s in row:
                if s.enhanced:
                    assert s.first_pass is not None and s.first_pass.binary_entropy > gate
                    fired += 1
                else:
                    assert s.first_pass is None and s.binary_entropy <= gate
                    kept += 1
    assert fired and kept
    ds = runs["dataset"]
    top = ev.tables["t2i"][0]
    for q in (0, 5):
        cands = [Item(image=ds.samples[g].image) for g in top[q, :3]]
        direct = f16_scorer.score_pairs(Item(text=ds.captions[q]), cands, enhance=f"gated:{gate}")
        mine = ev.scores("t2i", 3, f"gated:{gate}")[q]
        assert [s.enhanced for s in direct] == [s.enhanced for s in mine]
        for a, b in zip(direct, mine, strict=True):
            assert a.p_true == pytest.approx(b.p_true, rel=1e-6, abs=1e-9)
            assert a.entropy == pytest.approx(b.entropy, rel=1e-6)
    enhanced = {r.name: r.enhanced for r in runs["r2"].results if r.config.stage == "fine"}
    assert all(v == 0.0 for v in enhanced["fine k=3, enhance off"].values())
    assert all(v == 1.0 for v in enhanced["fine k=3, enhance always"].values())
    assert 0.0 < sum(enhanced[f"fine k=3, enhance gated:{gate:g}"].values()) < 2.0


def _coarse_positions(sim: np.ndarray) -> list[list[int]]:
    """Gallery indices per query, best first, ties by index (brute force)."""
    return [sorted(range(len(row)), key=lambda g: (-row[g], g)) for row in sim]


def test_recall_matches_a_brute_force_recount(runs):
    ev, report, gate = runs["second"], runs["r2"], runs["gate"]
    ds = runs["dataset"]
    key = ev.encoder.info.key
    img = ev.cache.vectors(key, "image", ev.image_keys, ev.encoder.info.dim)
    txt = ev.cache.vectors(key, "text", ev.text_keys, ev.encoder.info.dim)
    sim = np.array([[float(txt[t] @ img[i]) for i in ev.image_keys] for t in ev.text_keys])
    owner = ds.caption_owner
    t2i, i2t = _coarse_positions(sim), _coarse_positions(sim.T)

    def recall(positions: list[int], k: int) -> float:
        return sum(p < k for p in positions) / len(positions)

    t2i_pos = [t2i[c].index(owner[c]) for c in range(len(owner))]
    i2t_pos = [
        min(i2t[i].index(c) for c in range(len(owner)) if owner[c] == i) for i in range(len(ds.samples))
    ]
    coarse = report.result("coarse (CLIP)")
    for k in (1, 5, 10):
        assert coarse.recall["t2i"][k] == recall(t2i_pos, k)
        assert coarse.recall["i2t"][k] == recall(i2t_pos, k)

    # Fine, k=3, gated, with and without the entropy tie-break, text -> image.
    rows = ev.scores("t2i", 3, f"gated:{gate}")
    for tie in (True, False):
        positions = []
        for c, row in enumerate(rows):
            keys = {j: (-round(s.p_true, 2), s.entropy if tie else 0.0, j) for j, s in enumerate(row)}
            new = sorted(keys, key=keys.get)
            p = t2i_pos[c]
            positions.append(new.index(p) if p < 3 else p)
        name = f"fine k=3, enhance gated:{gate:g}" + ("" if tie else ", no tie-break")
        assert report.result(name).recall["t2i"][1] == recall(positions, 1)

    # Ranks beyond k keep the coarse order: Recall@K for K >= k is the coarse stage's.
    for res in report.results:
        if res.config.stage != "coarse":
            for d, by_k in res.recall.items():
                for k, v in by_k.items():
                    if k >= res.config.k:
                        assert v == coarse.recall[d][k], (res.name, d, k)


def test_listwise_picks_are_valid_positions(runs):
    n = N_IMAGES - 2
    for k in (2, 3):
        res = runs["r2"].result(f"listwise k={k}")
        assert set(res.recall) == {"i2t"}
        assert len(res.pick_positions) == k and sum(res.pick_positions) == n
        assert res.top1_changed["i2t"] == (n - res.pick_positions[0]) / n


def test_report_json_markdown_and_plot(runs, tiny_clip_dir, tmp_path):
    report = runs["r2"]
    paths = write_outputs(report, tmp_path / "out")
    doc = json.loads(paths["json"].read_text())
    assert doc["schema"] == "retllm-lite/eval" and doc["schema_version"] == 1
    assert doc["settings"]["ks"] == [2, 3] and doc["settings"]["gate_thresholds"] == [runs["gate"]]
    assert doc["settings"]["enhance"] == ["off", f"gated:{runs['gate']:g}", "always"]
    clip, vlm = doc["models"]["clip"], doc["models"]["vlm"]
    default = json.loads((tiny_clip_dir / "manifest.json").read_text())["default_variant"]  # CPU-dependent
    assert len(clip["manifest_sha256"]) == 64 and clip["variant"] == default
    assert len(vlm["model_sha256"]) == 64 and len(vlm["mmproj_sha256"]) == 64
    assert "<caption>" in vlm["prompts"]["t2i"] and "<caption>" in vlm["prompts"]["i2t"]
    assert {"clip_images", "clip_captions", "coarse", "vlm_t2i_plain", "total"} <= set(doc["timings"])
    assert "seconds_per_vlm_prompt" not in doc["timings"]  # everything came from the cache
    assert runs["r1"].timings["seconds_per_vlm_prompt"] > 0
    names = [r["name"] for r in doc["results"]]
    assert len(names) == len(set(names)) == 1 + 2 * 3 * 2 + 2
    for r in doc["results"]:
        dirs = ["i2t"] if r["stage"] == "listwise" else ["t2i", "i2t"]
        for d in dirs:
            assert set(r[d]) == {"R@1", "R@5", "R@10"} and all(0 <= v <= 1 for v in r[d].values())
        if r["stage"] == "listwise":
            assert r["rsum"] is None  # not comparable with rows covering both directions
        else:
            assert r["rsum"] == pytest.approx(sum(v for d in dirs for v in r[d].values()))
    with Image.open(paths["plot"]) as im:
        assert im.format == "PNG" and im.width > 300
    md = paths["markdown"].read_text()
    assert "![Recall@1 per configuration](recall_at_1.png)" in md
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table_lines) == 1 + len(names)  # header + one row per configuration
    assert "img005.jpg`: missing" in md and "img006.jpg`: unreadable" in md
    text = text_table(report)
    assert text.splitlines()[0].startswith("configuration") and len(text.splitlines()) == 1 + len(names)
    assert markdown(report, None).count("![") == 0


def _cli(*args: str):
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def test_cli_json_files_then_a_cached_rerun(dataset_files, tiny_clip_dir, tiny_vlm_f16, tmp_path):
    path, images = dataset_files
    common = [str(path), "--images", str(images), "--clip-model", str(tiny_clip_dir),
              "--vlm-model", str(tiny_vlm_f16.directory), "--k", "2,3", "--enhance", "off,gated",
              "--tie-break", "entropy", "--limit", "4", "--threads", "1", "--no-progress"]  # fmt: skip
    res = _cli(*common, "--listwise", "--json", "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    # available: readable or not (decoding comes later); the limit applies to those
    assert doc["dataset"]["images"] == 4 and doc["dataset"]["available"] == 7 and doc["dataset"]["limit"] == 4
    assert [r["name"] for r in doc["results"]] == [
        "coarse (CLIP)",
        "fine k=2, enhance off",
        "fine k=2, enhance gated:0.75",
        "fine k=3, enhance off",
        "fine k=3, enhance gated:0.75",
        "listwise k=2",
        "listwise k=3",
    ]
    assert doc["counts"]["pairs_scored"] > 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "report.md", "recall_at_1.png"}
    assert "skipped 1 image (1 missing)" in res.stderr  # the unreadable one is found later
    assert "evaluating the first 4 of 7 images" in res.stderr

    again = _cli(*common, "--direction", "i2t")
    assert again.exit_code == 0, again.output
    assert "Work: 0 images and 0 captions embedded (4 + 8 cached); 0 VLM prompts run" in again.stdout
    lines = again.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("configuration"))
    assert "I→T R@1" in header and "T→I" not in header
    assert any(ln.startswith("fine k=3, enhance gated:0.75 ") for ln in lines)


def test_cli_coarse_only_on_a_caption_folder_needs_no_reranker(tiny_clip_dir, tmp_path):
    items = scenes(4)
    names = save_images(tmp_path / "set", items)
    for name, s in zip(names, items, strict=True):
        (tmp_path / "set" / name).with_suffix(".txt").write_text("\n".join(s.captions))
    res = _cli(
        str(tmp_path / "set"), "--clip-model", str(tiny_clip_dir), "--no-fine", "--nl", "--no-progress"
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["coarse (CLIP)"]
    assert set(rows[0]["t2i"]) == {"R@1", "R@5", "R@10"} and rows[0]["t2i"]["R@10"] == 1.0  # 4 images


def test_cli_bad_dataset_is_one_line_naming_the_file(tiny_clip_dir, tmp_path):
    bad = write_jsonl(tmp_path / "set.jsonl", [{"image": "a.jpg", "captions": ["x"]}])
    bad.write_text(bad.read_text() + "{oops\n")
    res = CliRunner().invoke(cli, ["eval", str(bad), "--clip-model", str(tiny_clip_dir), "--no-fine"])
    assert res.exit_code == 1
    (line,) = res.output.strip().splitlines()
    assert line.startswith(f"Error: {bad}:2: not valid JSON (")
    assert line.endswith('(each line must be an object like {"image": "a.jpg", "captions": ["...", "..."]})')
