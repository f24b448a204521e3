"""Bad models and hostile queries: one clear line, non-zero exit, the index untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from retllm_lite.cli import cli
from retllm_lite.index.store import Index
from retllm_lite.pipeline import Retriever


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digest(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "writer.lock"}


@pytest.fixture
def built(photos, tiny_clip_dir, tmp_path):
    index_dir = tmp_path / "idx"
    assert run("index", photos, "--index", index_dir, "--clip-model", tiny_clip_dir).exit_code == 0
    return photos, index_dir


@pytest.fixture(scope="module")
def other_dim_model(tmp_path_factory):
    """A second tiny CLIP with 16-dim embeddings (the index holds 32-dim ones)."""
    from retllm_lite.quantize.clip import export_open_clip

    cfg = json.loads((Path(__file__).parent / "data" / "tiny-clip.json").read_text())
    cfg["embed_dim"] = 16
    d = tmp_path_factory.mktemp("dim16")
    (d / "tiny-clip-16.json").write_text(json.dumps(cfg))
    out = d / "model"
    export_open_clip(str(d / "tiny-clip-16.json"), out, random_init=True, int8=False, log=lambda m: None)
    return out


def default_tower_file(model_dir: Path, tower: str) -> str:
    """The file the model's default variant runs for ``tower``, as its manifest names it.

    Which file that is depends on the exporting CPU: a tower whose int8 settings all miss
    the parity bar there (plain AVX2 int8 kernels round differently from VNNI/AMX ones)
    keeps its fp32 file in the int8 variant.
    """
    m = json.loads((model_dir / "manifest.json").read_text())
    return m["variants"][m["default_variant"]][tower]["file"]


def broken_copy(src: Path, dest: Path, how: str, tower: str = "text") -> Path:
    """A copy of model ``src`` with the file its default variant runs for ``tower`` broken."""
    shutil.copytree(src, dest)
    target = dest / default_tower_file(dest, tower)
    data = bytearray(target.read_bytes())
    if how == "truncate":
        target.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":  # same size, different bytes: only the sha256 can tell
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif how == "wrong-kind":  # a GGUF where an ONNX should be, manifest rewritten to match
        fake = b"GGUF" + b"\x03\x00\x00\x00" + os.urandom(4096)
        target.write_bytes(fake)
        m = json.loads((dest / "manifest.json").read_text())
        import hashlib

        for entry in m["variants"].values():  # every variant that runs this file
            if entry[tower]["file"] == target.name:
                entry[tower].update(sha256=hashlib.sha256(fake).hexdigest(), bytes=len(fake))
        (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_onnx_of_the_wrong_kind(photos, tiny_clip_dir, tmp_path):
    """A file the manifest vouches for (sha256 matches) that onnxruntime cannot load."""
    bad = broken_copy(tiny_clip_dir, tmp_path / "bad", "wrong-kind", tower="image")
    res = run("index", photos, "--index", tmp_path / "idx", "--clip-model", bad)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    name = default_tower_file(bad, "image")
    assert len(lines) == 1 and "onnxruntime cannot load" in lines[0] and name in lines[0]
    with Index.open(tmp_path / "idx") as idx:  # nothing was embedded
        assert idx.catalog.vector_count() == 0


@pytest.mark.parametrize(
    ("how", "expected"),
    [("truncate", "truncated or replaced"), ("flip", "does not match the manifest")],
)
def test_bad_model_files(built, tiny_clip_dir, tmp_path, how, expected):
    photos, index_dir = built
    before = digest(index_dir)
    bad = broken_copy(tiny_clip_dir, tmp_path / f"bad-{how}", how)
    name = default_tower_file(bad, "text")
    for args in (
        ["search", "a dog", "--index", index_dir, "--clip-model", bad],
        ["index", photos, "--index", index_dir, "--clip-model", bad],
    ):
        res = run(*args)
        assert res.exit_code == 1, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and name in lines[0], lines
    assert digest(index_dir) == before


def test_not_a_model_directory(built, tmp_path):
    _photos, index_dir = built
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    for target, expected in ((gguf, "not a model directory"), (tmp_path / "nowhere", "no CLIP model")):
        res = run("search", "x", "--index", index_dir, "--clip-model", target)
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
        assert expected in res.stderr
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    res = run("search", "x", "--index", index_dir, "--clip-model", empty)
    assert res.exit_code == 1 and "no manifest.json" in res.stderr


def test_model_of_another_embedding_size(built, other_dim_model):
    photos, index_dir = built
    before = digest(index_dir)
    for args in (
        ["index", photos, "--index", index_dir, "--clip-model", other_dim_model, "--variant", "fp32"],
        ["search", "x", "--index", index_dir, "--clip-model", other_dim_model, "--variant", "fp32"],
    ):
        res = run(*args)
        assert res.exit_code == 1
        line = res.stderr.strip()
        assert "\n" not in line and "16-dim vectors; the index holds 32-dim" in line
    assert digest(index_dir) == before


HOSTILE_QUERIES = [
    "",
    " \t\n ",
    "a" * 1_000_000,
    "🐶" * 5000,
    "\u202eevil right-to-left\u202c",
    "nul\x00inside",
    "lone \udcff surrogate",
    "e\u0301\u0301\u0301 combining",
    "<end_of_text><start_of_text>",
    "\U0010ffff private use",
    "'; DROP TABLE items; --",
]


def test_queries_of_any_size_and_unicode(built, tiny_clip_dir):
    _photos, index_dir = built
    with Retriever(Index.open(index_dir)) as r:
        for q in HOSTILE_QUERIES:
            if not q:
                continue
            hits = r.search(text=q, k=3)
            assert len(hits) == 3, repr(q[:40])
    with Index.open(index_dir) as idx:  # the SQL-looking one did nothing
        assert idx.catalog.vector_count() == 24


def test_undecodable_command_line_query(built):
    _photos, index_dir = built
    proc = subprocess.run(
        [sys.executable, "-m", "retllm_lite", "search", b"caf\xe9 \xff", "--index", str(index_dir), "--json"],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 10


def test_empty_query_is_a_usage_error(built):
    _photos, index_dir = built
    res = run("search", "", "--index", index_dir)
    assert res.exit_code == 2 and "give a TEXT query" in res.stderr
