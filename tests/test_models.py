"""Model registry, pulls and first run, against a stand-in hub on 127.0.0.1 (tests/fake_hub.py).

The real download code runs (huggingface_hub over HTTP, resume, checksums, atomic
placement); only the hub is a local server, reached through HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import json
import socket
from importlib import resources

import numpy as np
import pytest
from click.testing import CliRunner
from retllm_lite.models import registry, store
from retllm_lite.models.pull import ensure_vlm, pull
from retllm_lite.quantize import hf_layout  # noqa: F401  (the default CLIP is a Hugging Face layout)

from fake_hub import FakeHub, running
from retllm_lite.cli import cli
from retllm_lite.errors import BadModelFile, ChecksumMismatch, HubUnreachable, ModelNotFound
from retllm_lite.paths import models_dir
from tiny_hf_clip import tiny_hf_clip_files

QWEN = registry.get("qwen2-vl-2b")
CLIP = registry.get("clip-vit-b-32")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gguf_like(seed: int, size: int) -> bytes:
    return b"GGUF" + np.random.default_rng(seed).bytes(size - 4)


@pytest.fixture
def hub():
    with running(FakeHub()) as h:
        yield h


@pytest.fixture
def online(hub, monkeypatch):
    """HF_ENDPOINT -> the stand-in hub, downloads on (conftest turns them off for every test)."""
    for var in ("HF_HUB_OFFLINE", "RETLLM_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def serve_qwen(hub: FakeHub, model_size: int = 300_000, mmproj_size: int = 120_000) -> dict[str, bytes]:
    files = {
        QWEN.vlm["model"]: gguf_like(1, model_size),
        QWEN.vlm["mmproj"]: gguf_like(2, mmproj_size),
        "README.md": b"# Qwen2-VL\n",
        "Qwen2-VL-2B-Instruct-Q8_0.gguf": gguf_like(3, 1000),  # not ours: never fetched
    }
    hub.add(QWEN.repo, files)
    return files


def leftovers(name: str) -> list[str]:
    root = models_dir()
    return [str(p) for p in (root / name, root / ".partial" / name, root / ".sources" / name) if p.exists()]


# ---------------------------------------------------------------- the registry


def test_registry_has_the_required_models_and_no_checksums():
    entries = registry.entries()
    clips = [e for e in entries.values() if e.kind == "clip"]
    vlms = [e for e in entries.values() if e.kind == "vlm"]
    assert registry.default_name("clip") == "clip-vit-b-32" and CLIP.ready and CLIP.pinned
    assert any("siglip" in e.repo.lower() for e in clips) and any(not e.ready for e in clips)
    assert {"gemma-3-4b", "qwen2-vl-2b"} <= {e.name for e in vlms}
    for e in entries.values():
        assert e.license and e.repo.count("/") == 1 and (e.pinned or e.revision == "main")
        if e.kind == "clip" and e.ready:
            towers = {f for v in e.clip["variants"].values() for f in v.values()}
            assert towers <= set(e.required_files), e.name
            assert set(e.clip["outputs"]) == {"image", "text"}
    text = (resources.files("retllm_lite.models") / "registry.toml").read_text()
    assert not any(len(w) == 64 and all(c in "0123456789abcdef" for c in w) for w in text.split('"'))
    with pytest.raises(BadModelFile, match="never holds checksums"):
        vlm = {"model": "m.gguf", "mmproj": "p.gguf", "sha256": "0" * 64}
        registry._entry("x", {"kind": "vlm", "ready": True, "repo": "a/b", "revision": "main", "vlm": vlm})


def test_encoder_default_is_the_registry_default():
    from retllm_lite.encode import DEFAULT_CLIP_MODEL

    assert registry.default_name("clip") == DEFAULT_CLIP_MODEL


# ---------------------------------------------------------------- pulls


def test_pull_checks_records_and_places_a_vlm(online):
    files = serve_qwen(online)
    res = invoke("models", "pull", "qwen2-vl-2b", "--json")
    assert res.exit_code == 0, res.output
    assert (
        "downloading qwen2-vl-2b (420.0 kB, 2 files) from ggml-org/Qwen2-VL-2B-Instruct-GGUF@" in res.stderr
    )
    summary = json.loads(res.stdout)[0]
    folder = models_dir() / "qwen2-vl-2b"
    assert summary["status"] == "downloaded" and summary["path"] == str(folder)
    record = json.loads((folder / "pull.json").read_text())
    assert record["commit"] == online.repos[QWEN.repo].commit and record["revision"] == "main"
    assert record["endpoint"] == online.url
    got = {f["path"]: f for f in record["files"]}
    assert set(got) == {QWEN.vlm["model"], QWEN.vlm["mmproj"]}
    for path, f in got.items():
        assert f["sha256"] == hashlib.sha256(files[path]).hexdigest() == f["etag"]
        assert f["size"] == len(files[path]) and (folder / path).read_bytes() == files[path]
    assert not (folder / ".cache").exists() and not (models_dir() / ".partial" / "qwen2-vl-2b").exists()
    assert online.gets("/Qwen2-VL-2B-Instruct-Q8_0.gguf") == []

    model, mmproj = store.resolve_vlm("qwen2-vl-2b")
    assert (model.name, mmproj.name) == (QWEN.vlm["model"], QWEN.vlm["mmproj"])
    assert store.resolve_vlm(str(folder)) == (model, mmproj)  # a folder works like a name
    assert store.resolve_vlm(str(model), mmproj="qwen2-vl-2b") == (model, mmproj)  # --mmproj NAME
    with pytest.raises(ModelNotFound, match="needs its projector"):
        store.resolve_vlm(str(model))
    assert invoke("models", "path", "qwen2-vl-2b").stdout.strip() == str(folder)
    listed = {r["name"]: r for r in json.loads(invoke("models", "list", "--json").stdout)}
    assert listed["qwen2-vl-2b"]["state"] == "ready" and listed["gemma-3-4b"]["state"] == "not downloaded"

    again = invoke("models", "pull", "qwen2-vl-2b", "--json")  # already here: no transfer
    assert json.loads(again.stdout)[0]["status"] == "present"
    assert len(online.gets(QWEN.vlm["model"])) == 1

    ok = invoke("models", "verify", "qwen2-vl-2b", "--json")
    assert ok.exit_code == 0 and all(r["ok"] for r in json.loads(ok.stdout))
    damaged = bytearray((folder / QWEN.vlm["mmproj"]).read_bytes())
    damaged[100] ^= 1
    (folder / QWEN.vlm["mmproj"]).write_bytes(bytes(damaged))
    bad = invoke("models", "verify", "qwen2-vl-2b")
    assert bad.exit_code == 1 and "1 of 2 files bad" in bad.stdout
    assert "fix: retllm models pull qwen2-vl-2b --force" in bad.stdout

    doctor = invoke("doctor", "--json")
    assert doctor.exit_code == 1
    report = json.loads(doctor.stdout)
    assert [m["verified"] for m in report["models"] if m["name"] == "qwen2-vl-2b"] == [False]
    assert any(p["fix"] == "retllm models pull qwen2-vl-2b --force" for p in report["problems"])

    forced = invoke("models", "pull", "qwen2-vl-2b", "--force")
    assert forced.exit_code == 0 and invoke("models", "verify").exit_code == 0
    removed = invoke("models", "remove", "qwen2-vl-2b", "--json")
    assert json.loads(removed.stdout)[0]["removed"] == [str(folder)] and leftovers("qwen2-vl-2b") == []


def test_resume_after_the_server_drops_the_connection(online, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    files = serve_qwen(online)
    online.drop[QWEN.vlm["model"]] = (100_000, 1)  # one drop after 100 kB of 300 kB
    res = invoke("models", "pull", "qwen2-vl-2b")
    assert res.exit_code == 0, res.output
    # The second request continues from what the first one wrote (one 64 kB chunk), not from 0.
    assert online.gets(QWEN.vlm["model"]) == [None, "bytes=65536-"]
    path = models_dir() / "qwen2-vl-2b" / QWEN.vlm["model"]
    assert path.read_bytes() == files[QWEN.vlm["model"]]


def test_interrupted_pull_is_not_a_model_and_the_next_pull_resumes(online, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    files = serve_qwen(online)
    online.drop[QWEN.vlm["model"]] = (200_000, 1)
    with pytest.raises(HubUnreachable, match="run the same command again"):
        pull("qwen2-vl-2b", retries=0)
    assert leftovers("qwen2-vl-2b") == [str(models_dir() / ".partial" / "qwen2-vl-2b")]
    with pytest.raises(ModelNotFound, match="not on this machine"):
        store.resolve_vlm("qwen2-vl-2b")
    assert invoke("models", "path", "qwen2-vl-2b").exit_code == 1
    listed = {r["name"]: r for r in json.loads(invoke("models", "list", "--json").stdout)}
    assert listed["qwen2-vl-2b"]["state"] == "partial"

    said = []
    result = pull("qwen2-vl-2b", announce=said.append)
    assert result["status"] == "downloaded" and said[0].startswith("resuming the download of qwen2-vl-2b")
    assert online.gets(QWEN.vlm["model"]) == [None, "bytes=196608-"]  # 3 chunks of 64 kB were kept
    assert (models_dir() / "qwen2-vl-2b" / QWEN.vlm["model"]).read_bytes() == files[QWEN.vlm["model"]]
    assert not (models_dir() / ".partial" / "qwen2-vl-2b").exists()


def test_checksum_mismatch_rejects_the_file_and_leaves_nothing(online):
    serve_qwen(online)
    online.corrupt.add(QWEN.vlm["mmproj"])
    res = invoke("models", "pull", "qwen2-vl-2b")
    assert res.exit_code == 1
    assert "hub reports" in res.output and "deleted it" in res.output
    assert leftovers("qwen2-vl-2b") == []
    with pytest.raises(ChecksumMismatch):
        pull("qwen2-vl-2b")


def test_small_files_are_checked_against_their_git_blob_id(online):
    files = tiny_hf_clip_files()
    online.add(CLIP.repo, files, commit=CLIP.revision)
    online.corrupt.add("preprocessor_config.json")
    with pytest.raises(ChecksumMismatch, match="blob-sha1"):
        pull("clip-vit-b-32")
    assert leftovers("clip-vit-b-32") == []


def test_a_file_missing_from_the_repository(online):
    files = serve_qwen(online)
    del online.repos[QWEN.repo].files[QWEN.vlm["mmproj"]]
    res = invoke("models", "pull", "qwen2-vl-2b")
    assert res.exit_code == 1
    assert f"has no {QWEN.vlm['mmproj']} (needed by model 'qwen2-vl-2b')" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert leftovers("qwen2-vl-2b") == [] and online.gets(QWEN.vlm["model"]) == []
    online.repos[QWEN.repo].files[QWEN.vlm["mmproj"]] = files[QWEN.vlm["mmproj"]]
    assert invoke("models", "pull", "qwen2-vl-2b").exit_code == 0


def test_offline_says_what_to_do_in_one_line_and_sends_nothing(hub, monkeypatch, photos, tmp_path):
    serve_qwen(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # HF_HUB_OFFLINE=1 comes from conftest
    res = invoke("models", "pull", "qwen2-vl-2b")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "downloads are off" in res.output and "retllm models pull qwen2-vl-2b" in res.output
    assert "--vlm-model MODEL.gguf --mmproj MMPROJ.gguf" in res.output

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("RETLLM_OFFLINE", "1")
    first = invoke("index", photos, "--index", tmp_path / "idx")
    assert first.exit_code == 1 and len(first.output.strip().splitlines()) == 1
    assert "retllm models pull clip-vit-b-32" in first.output and "--clip-model DIR" in first.output
    monkeypatch.delenv("RETLLM_OFFLINE")
    flag = invoke(
        "search", "a dog", "--clip-model", "siglip-base-224", "--offline", "--index", tmp_path / "i"
    )
    assert flag.exit_code == 1 and "retllm models pull siglip-base-224" in flag.output
    with pytest.raises(ModelNotFound, match="downloads are off"):
        ensure_vlm(offline=True)
    assert hub.requests == []


def test_first_run_with_the_hub_unreachable_is_one_clear_line(monkeypatch, photos, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    res = invoke("index", photos, "--index", tmp_path / "idx")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Connection refused" in lines[0]
    assert "retllm models pull clip-vit-b-32" in lines[0] and "--clip-model DIR" in lines[0]


def test_huggingface_hub_imported_offline_still_downloads_when_online(online, monkeypatch):
    import huggingface_hub.constants

    # As if huggingface_hub had been imported while HF_HUB_OFFLINE was set (it reads it once).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    serve_qwen(online)
    assert pull("qwen2-vl-2b")["status"] == "downloaded"


# ---------------------------------------------------------------- first run


def test_first_index_downloads_the_default_clip_and_search_uses_it(online, photos, tmp_path):
    online.add(CLIP.repo, tiny_hf_clip_files(), commit=CLIP.revision)
    index = tmp_path / "idx"
    res = invoke("index", photos, "--index", index)
    assert res.exit_code == 0, res.output
    assert (
        "downloading clip-vit-b-32 (" in res.stderr and f"to {models_dir() / 'clip-vit-b-32'}" in res.stderr
    )
    assert "24 indexed" in res.stderr
    folder = models_dir() / "clip-vit-b-32"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "retllm-clip-onnx" and manifest["source"]["commit"] == CLIP.revision
    assert manifest["variants"]["int8"]["image"]["output"] == "image_embeds"
    record = json.loads((folder / "pull.json").read_text())
    assert {f["etag_kind"] for f in record["files"]} == {"lfs-sha256", "git-blob-sha1"}
    assert "README.md" not in {f["path"] for f in record["files"]}

    requests = len(online.requests)
    again = invoke("index", photos, "--index", index)  # the index remembers its model
    assert again.exit_code == 0 and "24 unchanged" in again.stderr and len(online.requests) == requests
    target = sorted(photos.rglob("*.jpg"))[3]
    hits = json.loads(invoke("search", "--image", target, "--index", index, "--json", "-k", "3").stdout)
    assert hits[0]["path"] == str(target) and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    named = invoke("search", "a red car", "--index", index, "--clip-model", "clip-vit-b-32", "--json")
    assert named.exit_code == 0 and len(json.loads(named.stdout)) == 10 and len(online.requests) == requests

    from retllm_lite import load_encoder  # by name: the public API resolves it

    enc = load_encoder("clip-vit-b-32")
    assert enc.info.dim == 8 and enc.info.variant == "int8"

    report = json.loads(invoke("doctor", "--json", "--index", index).stdout)
    assert report["index"]["items"]["vectors"] == 24
    assert [m["verified"] for m in report["models"]] == [True]
    assert "avx2" in report["cpu"]["features"] or report["cpu"]["machine"] != "x86_64"
    assert {"onnxruntime", "llama_cpp_python", "hnswlib", "numpy", "pillow"} <= set(report["versions"])
    assert any("qwen2-vl-2b" in p["fix"] for p in report["problems"])  # default VLM not here: a note

    assert invoke("models", "remove", "clip-vit-b-32").exit_code == 0
    gone = invoke("index", photos, "--index", index)
    assert gone.exit_code == 1 and "retllm models pull clip-vit-b-32" in gone.output
    lost = invoke("search", "a red car", "--index", index)
    assert lost.exit_code == 1 and "retllm models pull clip-vit-b-32" in lost.stderr
    report = json.loads(invoke("doctor", "--json", "--index", index).stdout)
    assert {"level": "error", "problem": f"the model that built the index is gone ({folder})",
            "fix": "retllm models pull clip-vit-b-32"} in report["problems"]  # fmt: skip

    # pulled again, it is the same model (same manifest sha256): the index works again
    assert invoke("models", "pull", "clip-vit-b-32").exit_code == 0
    back = invoke("search", "--image", target, "--index", index, "--json", "-k", "1")
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout)[0]["path"] == str(target)


def test_quantize_entry_downloads_the_checkpoint_and_says_how_to_make_it(online):
    entry = registry.get("laion-clip-vit-b-32")
    online.add(entry.repo, {"open_clip_pytorch_model.bin": b"\x80" * 4096, "README.md": b"x"})
    res = invoke("models", "pull", entry.name)
    assert res.exit_code == 0, res.output
    src = models_dir() / ".sources" / entry.name
    expected = (
        f"make it with: retllm quantize clip ViT-B-32 --pretrained {src / 'open_clip_pytorch_model.bin'} "
        f"--out {models_dir() / entry.name}"
    )
    assert expected in res.stderr
    with pytest.raises(ModelNotFound, match="downloaded but not made yet"):
        store.resolve_clip_dir(entry.name)
    listed = {r["name"]: r for r in json.loads(invoke("models", "list", "--json").stdout)}
    assert listed[entry.name]["state"] == "source"


@pytest.mark.slow
def test_pull_quantize_makes_a_model_from_the_checkpoint(online, tmp_path):
    """--quantize runs 'retllm quantize clip' on the pulled checkpoint (tiny open_clip here)."""
    import dataclasses

    import torch
    from retllm_lite.quantize.clip import create_open_clip

    from clip_fixtures import TINY_CLIP_CONFIG
    from retllm_lite import load_encoder  # by name: the public API resolves it

    tiny = str(TINY_CLIP_CONFIG)
    model, _n, _s = create_open_clip(tiny, None, True, seed=3)
    ckpt = tmp_path / "ckpt.bin"
    torch.save(model.state_dict(), ckpt)
    entry = dataclasses.replace(
        registry.get("laion-clip-vit-b-32"), name="tiny-laion", repo="test/tiny-laion", quantize={
            "command": "clip", "arch": tiny},
    )  # fmt: skip
    online.add(entry.repo, {"open_clip_pytorch_model.bin": ckpt.read_bytes()})
    result = pull(entry, quantize=True)
    assert result["ready"] and result["path"] == str(models_dir() / "tiny-laion")
    enc = load_encoder("tiny-laion")
    vec = enc.embed_texts(["a photo of a dog"])
    assert vec.shape == (1, 32) and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-4)


def test_pulled_vlm_scores_with_llama_cpp(online, tiny_vlm_f16):
    """The GGUF pair goes through the pull path and llama.cpp scores a pair with it."""
    from PIL import Image

    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
    from retllm_lite.rerank.scorer import Item

    online.add(
        QWEN.repo,
        {
            QWEN.vlm["model"]: tiny_vlm_f16.model.read_bytes(),
            QWEN.vlm["mmproj"]: tiny_vlm_f16.mmproj.read_bytes(),
        },
    )
    model, mmproj = ensure_vlm("qwen2-vl-2b", announce=lambda m: None)
    assert model.parent == models_dir() / "qwen2-vl-2b"
    with LlamaMtmdScorer(model, mmproj, n_threads=1) as scorer:
        score = scorer.score_pairs(
            Item(image=Image.new("RGB", (64, 64), "red")), [Item(text="a red square")]
        )[0]
    assert 0.0 <= score.p_true <= 1.0 and 0.0 <= score.p_false <= 1.0
