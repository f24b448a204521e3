"""``retllm quantize clip``: ONNX towers reproduce torch; manifest, int8 choice, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retllm_lite.encode import load_encoder
from retllm_lite.errors import BadModelFile, ModelNotFound, RetllmError
from retllm_lite.hashing import sha256_file

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from clip_fixtures import TINY_CLIP_CONFIG, draw_photo  # noqa: E402


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_manifest_records_files_and_parity(tiny_clip_dir):
    m = json.loads((tiny_clip_dir / "manifest.json").read_text())
    assert m["format"] == "retllm-clip-onnx" and m["architecture"] == "tiny-clip"
    assert m["source"] == {"kind": "random-init", "seed": 0, "architecture": "tiny-clip"}
    assert m["embed_dim"] == 32
    assert m["preprocess"]["size"] == 224 and m["preprocess"]["resize_mode"] == "shortest"
    assert m["tokenizer"]["kind"] == "open_clip_bpe" and m["tokenizer"]["check"]["mismatches"] == 0
    for variant, towers in m["variants"].items():
        for tower, entry in towers.items():
            path = tiny_clip_dir / entry["file"]
            assert sha256_file(path) == entry["sha256"], (variant, tower)
            assert path.stat().st_size == entry["bytes"]
    for tower in ("image", "text"):
        assert m["parity"]["fp32"][tower]["min_cosine"] >= 0.99999
        assert m["parity"].get("int8", m["parity"]["fp32"])[tower]["mean_cosine"] >= 0.999  # int8 or fp32
        chosen = m["quantization"]["towers"][tower]["chosen"]
        passing = [c for c in m["quantization"]["towers"][tower]["candidates"] if c["passed"]]
        if chosen is not None:  # the fastest passing setting was kept
            fastest = min(passing, key=lambda c: c["ms_per_item"])
            assert chosen["weight_type"] == fastest["weight_type"]
            assert chosen["reduce_range"] == fastest["reduce_range"]


def test_onnx_matches_torch_end_to_end(tiny_clip_dir, tiny_clip_torch):
    """Our PIL/numpy preprocessing + tokenizer + ONNX vs open_clip's transform + torch."""
    from open_clip.transform import image_transform

    images = [draw_photo(i, (320 + 40 * i, 240)) for i in range(5)]
    texts = ["a red circle", "two blue squares on green", "", "a photo of a dog " * 30]
    tf = image_transform(224, is_train=False)
    with torch.no_grad():
        ref_img = tiny_clip_torch.encode_image(torch.stack([tf(im) for im in images])).numpy()
        ref_txt = tiny_clip_torch.encode_text(open_clip.tokenize(texts)).numpy()
    fp32 = load_encoder(tiny_clip_dir, variant="fp32", draft_factor=None)
    assert _cos(fp32.embed_images(images), ref_img).min() >= 0.99999
    assert _cos(fp32.embed_texts(texts), ref_txt).min() >= 0.99999
    int8 = load_encoder(tiny_clip_dir, draft_factor=None)  # int8, or fp32 where no tower kept int8
    assert _cos(int8.embed_images(images), ref_img).mean() >= 0.999
    assert _cos(int8.embed_texts(texts), ref_txt).mean() >= 0.998
    # dynamic batch: one at a time equals batched
    one = np.concatenate([fp32.embed_images([im]) for im in images])
    assert _cos(one, fp32.embed_images(images)).min() > 0.99999


def test_embeddings_are_unit_length(tiny_clip_dir):
    enc = load_encoder(tiny_clip_dir)
    v = enc.embed_texts(["a", "b c d"])
    assert v.dtype == np.float32 and v.shape == (2, 32)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    m = json.loads((tiny_clip_dir / "manifest.json").read_text())
    assert enc.info.variant == m["default_variant"] and enc.info.dim == 32


def test_corrupt_tower_is_a_clear_error(tiny_clip_dir, tmp_path):
    import re
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip_dir, broken)
    m = json.loads((broken / "manifest.json").read_text())
    variants, default = m["variants"], m["default_variant"]
    name = variants[default]["image"]["file"]  # image.int8.onnx, or image.onnx where int8 fell back
    f = broken / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BadModelFile, match=re.escape(name)):
        load_encoder(broken, variant=default)
    if variants["fp32"]["image"]["file"] == name:  # the same file: fp32 is broken too
        with pytest.raises(BadModelFile, match=re.escape(name)):
            load_encoder(broken, variant="fp32")
    else:
        assert load_encoder(broken, variant="fp32").embed_texts(["ok"]).shape == (1, 32)


def test_int8_fallback_is_recorded_per_tower(tmp_path):
    """A tower no int8 setting brings over its bar stays fp32, and the manifest says so.

    The bars make the outcome the same on every CPU: 0 keeps the image tower's fastest int8
    setting, above 1 no setting can pass for the text tower.
    """
    from retllm_lite.quantize.clip import export_open_clip

    from retllm_lite.encode.manifest import int8_summary

    out = tmp_path / "mixed"
    m = export_open_clip(
        str(TINY_CLIP_CONFIG), out, random_init=True, log=lambda msg: None,
        int8_min_mean_cosine={"image": 0.0, "text": 1.01},
    )  # fmt: skip
    q = m["quantization"]
    assert q["towers"]["image"]["kept"] == "int8" and q["towers"]["image"]["chosen"] is not None
    assert q["towers"]["text"]["kept"] == "fp32" and q["towers"]["text"]["chosen"] is None
    assert all(not c["passed"] for c in q["towers"]["text"]["candidates"])
    assert m["variants"]["int8"]["image"]["file"] == "image.int8.onnx"
    assert m["variants"]["int8"]["text"] == m["variants"]["fp32"]["text"]
    assert not (out / "text.int8.onnx").exists() and (out / "image.int8.onnx").is_file()
    assert m["parity_thresholds"]["int8_mean_cosine"] == {"image": 0.0, "text": 1.01}
    # the CPU the choice was made on, with the feature that decides int8 rounding
    assert set(q["cpu"]) == {"model", "machine", "features", "vnni", "int8_kernels"}
    assert q["cpu"]["int8_kernels"] in ("amx", "vnni", "avx2", "sse", "neon", "neon-dot", "i8mm", "unknown")
    lines = int8_summary(m)
    assert lines["image"].startswith("int8 ") and q["cpu"]["int8_kernels"] in lines["image"]
    assert lines["text"].startswith("fp32 (no int8 setting met mean cosine 1.01")
    # retllm doctor shows it, and notes a CPU whose int8 kernels differ from the exporter's
    from retllm_lite.doctor import clip_int8_info

    problems: list[dict] = []
    info = clip_int8_info(out, q["cpu"], problems, "model mixed")
    assert info["towers"] == lines and info["chosen_on"] == q["cpu"] and problems == []
    elsewhere = dict(q["cpu"], int8_kernels="sse" if q["cpu"]["int8_kernels"] != "sse" else "avx2")
    clip_int8_info(out, elsewhere, problems, "model mixed")
    assert len(problems) == 1 and "rounds differently" in problems[0]["problem"]
    enc = load_encoder(out)  # the int8 variant runs: int8 image tower, fp32 text tower
    assert enc.info.variant == "int8" and enc.embed_texts(["a"]).shape == (1, 32)
    none = export_open_clip(
        str(TINY_CLIP_CONFIG), tmp_path / "none", random_init=True, log=lambda msg: None,
        int8_min_mean_cosine=1.01,
    )  # fmt: skip
    assert set(none["variants"]) == {"fp32"} and none["default_variant"] == "fp32"
    assert {t["kept"] for t in none["quantization"]["towers"].values()} == {"fp32"}


def test_refuses_existing_output_and_writes_nothing_on_failure(tiny_clip_dir, tmp_path):
    from retllm_lite.quantize.clip import export_open_clip

    with pytest.raises(RetllmError, match="not empty"):
        export_open_clip(str(TINY_CLIP_CONFIG), tiny_clip_dir, random_init=True, log=lambda m: None)
    out = tmp_path / "never"
    with pytest.raises(ModelNotFound):
        export_open_clip("No-Such-Arch", out, random_init=True, log=lambda m: None)
    with pytest.raises(ModelNotFound, match="neither a file nor a known tag"):
        export_open_clip(str(TINY_CLIP_CONFIG), out, pretrained="nonexistent-tag", log=lambda m: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_local_checkpoint_round_trip(tiny_clip_torch, tiny_clip_dir, tmp_path):
    """--pretrained FILE loads a local checkpoint (weights_only) and reproduces its weights."""
    from retllm_lite.quantize.clip import export_open_clip

    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_clip_torch.state_dict()}, ckpt)
    out = tmp_path / "from-ckpt"
    m = export_open_clip(str(TINY_CLIP_CONFIG), out, pretrained=str(ckpt), int8=False, log=lambda x: None)
    assert m["source"]["kind"] == "checkpoint" and m["source"]["sha256"] == sha256_file(ckpt)
    a = load_encoder(out).embed_texts(["same weights"])
    b = load_encoder(tiny_clip_dir, variant="fp32").embed_texts(["same weights"])
    assert float(a[0] @ b[0]) > 0.99999


def test_unsafe_pickle_checkpoint_is_refused(tmp_path):
    """A checkpoint that would run code when unpickled is rejected, not executed."""
    import pickle

    from retllm_lite.quantize.clip import export_open_clip

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "evil.pt"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(ModelNotFound):
        export_open_clip(str(TINY_CLIP_CONFIG), tmp_path / "out", pretrained=str(ckpt), log=lambda x: None)
    assert not marker.exists()
