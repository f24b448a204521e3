"""The CLI end to end through click's runner, plus the torch-free search check in a subprocess."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from retllm_lite.cli import cli
from torch_free import run_without_torch


def invoke(*args, **kw):
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture
def indexed(photos, tiny_clip_dir, tmp_path):
    index_dir = tmp_path / "idx"
    res = invoke("index", photos, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert res.exit_code == 0, res.output
    return photos, index_dir


def test_index_then_search_image_json_returns_it_first(indexed):
    photos, index_dir = indexed
    for f in sorted(photos.rglob("*.jpg")):
        res = invoke("search", "--image", f, "--index", index_dir, "--json", "-k", "5")
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)
        assert isinstance(rows, list) and len(rows) == 5
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0]["path"] == str(f) and os.path.isabs(rows[0]["path"])
        assert all(isinstance(r["score"], float) for r in rows)
        assert rows[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_text_search_table_paths_nl_and_filters(indexed):
    photos, index_dir = indexed
    table = invoke("search", "a red circle", "--index", index_dir, "-k", "3")
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split()[:3] == ["#", "score", "path"]
    assert len(table.stdout.splitlines()) == 4
    paths = invoke("search", "a red circle", "--index", index_dir, "-k", "4", "--paths")
    lines = paths.stdout.splitlines()
    assert len(lines) == 4 and all(Path(p).is_file() for p in lines)
    nl = invoke("search", "a red circle", "--index", index_dir, "-k", "4", "--nl")
    assert [json.loads(line)["path"] for line in nl.stdout.splitlines()] == lines
    only = invoke("search", "x", "--index", index_dir, "-k", "20", "--include", "*/album1/*", "--json")
    rows = json.loads(only.stdout)
    assert len(rows) == 8 and all("/album1/" in r["path"] for r in rows)
    excl = invoke("search", "x", "--index", index_dir, "-k", "30", "--exclude", "*/album1/*", "--json")
    assert len(json.loads(excl.stdout)) == 16
    composed = invoke(
        "search",
        "a red circle",
        "--image",
        sorted(photos.rglob("*.jpg"))[0],
        "--image-weight",
        "0.9",
        "--index",
        index_dir,
        "--json",
    )
    assert json.loads(composed.stdout)[0]["path"] == str(sorted(photos.rglob("*.jpg"))[0])
    high = invoke("search", "x", "--index", index_dir, "--threshold", "1.5", "--json")
    assert json.loads(high.stdout) == []


def test_errors_listing_and_summary(photos, tiny_clip_dir, tmp_path):
    (photos / "broken.jpg").write_text("nope")
    index_dir = tmp_path / "idx"
    res = invoke("index", photos, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert "24 indexed" in res.stderr and "1 not indexed: 1 not an image" in res.stderr
    errs = invoke("index", "--errors", "--index", index_dir, "--json")
    rows = json.loads(errs.stdout)
    assert rows == [{"path": str(photos / "broken.jpg"), "reason": rows[0]["reason"]}]
    again = invoke("index", photos, "--index", index_dir, "--json")  # model comes from the index
    assert json.loads(again.stdout)["unchanged"] == 25


def test_missing_model_and_index_are_one_line_errors(photos, tmp_path):
    res = CliRunner().invoke(cli, ["index", str(photos), "--index", str(tmp_path / "idx")])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "retllm quantize clip" in lines[0] and "--clip-model" in lines[0]
    assert not (tmp_path / "idx").exists()  # no empty index left behind
    res = CliRunner().invoke(cli, ["search", "dog", "--index", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no index at" in res.stderr and "retllm index" in res.stderr
    res = CliRunner().invoke(cli, ["search", "--index", str(tmp_path)])
    assert res.exit_code == 2


def test_search_never_imports_torch(indexed):
    photos, index_dir = indexed
    image = sorted(photos.rglob("*.jpg"))[0]
    common = ["--index", index_dir, "--json", "-k", "1"]
    text_hits, image_hits = run_without_torch(
        ["search", "a dog", *common], ["search", "--image", image, *common]
    )
    assert json.loads(text_hits) and json.loads(image_hits)[0]["path"] == str(image)


def test_info_json(indexed):
    _photos, index_dir = indexed
    res = invoke("info", "--index", index_dir, "--json")
    info = json.loads(res.stdout)
    assert info["items"]["vectors"] == 24 and info["encoder"]["dim"] == 32


def test_quantize_clip_command(tmp_path):
    from clip_fixtures import TINY_CLIP_CONFIG

    out = tmp_path / "m"
    res = invoke("quantize", "clip", TINY_CLIP_CONFIG, "--random-init", "--no-int8", "--out", out, "--json")
    assert res.exit_code == 0
    manifest = json.loads(res.stdout)
    assert list(manifest["variants"]) == ["fp32"] and (out / "manifest.json").is_file()
    res = CliRunner().invoke(cli, ["quantize", "clip", "ViT-B-32", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "exactly one of --pretrained" in res.stderr


def test_table_never_prints_control_characters_from_names(photos, tiny_clip_dir, tmp_path):
    evil = photos / "evil\x1b[2J\nname.jpg"
    (photos / "album0" / "img_0000.jpg").rename(evil)
    index_dir = tmp_path / "idx"
    assert invoke("index", photos, "--index", index_dir, "--clip-model", tiny_clip_dir).exit_code == 0
    res = invoke("search", "--image", evil, "--index", index_dir, "-k", "1")
    assert "\x1b" not in res.stdout and "\\x1b[2J\\x0aname.jpg" in res.stdout
    assert len(res.stdout.splitlines()) == 2


def test_physical_cores_counts_smt_siblings_once(tmp_path):
    import os

    from retllm_lite.cpu import physical_cores

    usable = sorted(os.sched_getaffinity(0))
    blocks = []
    for n, cpu in enumerate(usable):  # two logical CPUs (SMT siblings) per core
        blocks.append(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {n // 2}\nflags\t\t: avx2\n")
    info = tmp_path / "cpuinfo"
    info.write_text("\n".join(blocks) + "\n")
    assert physical_cores(info) == (len(usable) + 1) // 2
    info.write_text("processor\t: 0\nflags\t\t: avx2\n")  # no topology: the usable logical CPUs
    assert physical_cores(info) == len(usable)
