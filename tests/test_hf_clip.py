"""``retllm quantize clip --hf``: HF CLIP/SigLIP checkouts -> optimum-onnx -> our two-tower layout.

Checked against transformers itself: its processors (pixels, token ids) and
``get_image_features`` / ``get_text_features`` on generated images and texts, plus
``write_hf_manifest`` on a ready-made ONNX download laid out like the hub's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from retllm_lite.quantize.hf_layout import UnsupportedModel, hf_preprocess_config, write_hf_manifest

from clip_fixtures import draw_photo, make_photo_folder
from retllm_lite.cli import cli
from retllm_lite.encode import load_encoder
from retllm_lite.encode.preprocess import preprocess
from retllm_lite.errors import BadInput, BadModelFile, MissingDependency
from retllm_lite.hashing import sha256_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("optimum.exporters.onnx")

from hf_fixtures import CLIP_SIZE, SIGLIP_CONTEXT, SIGLIP_SIZE, build_tiny_hf_clip  # noqa: E402

KINDS = ["clip", "siglip"]
TEXTS = [
    "a red circle",
    "Two blue squares, on green!",
    "",
    "A PHOTO of a dog " * 30,
    "café — “quotes” & emoji 🐶",
]


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def _images():
    """Generated photos: landscape, portrait, odd sizes, smaller than the tower, exact size."""
    # (322, 200) -> 103 x 64: crop offset 19.5, floored by HF (19), rounded by torchvision (20)
    sizes = [(320, 240), (200, 322), (322, 200), (227, 301), (97, 61), (CLIP_SIZE, CLIP_SIZE), (1000, 250)]
    out = [draw_photo(i, s) for i, s in enumerate(sizes)]
    out.append(draw_photo(9, (40, 40)).resize((21, 29)))  # upscaled
    return out


@pytest.fixture(scope="module")
def hf(hf_checkouts):
    """model_type -> (transformers model, processor), loaded the ordinary HF way."""
    from transformers import AutoModel, AutoProcessor

    return {
        kind: (AutoModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path))
        for kind, path in hf_checkouts.items()
    }


def _hf_text_features(kind, model, processor, texts, length):
    batch = processor.tokenizer(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )
    # SigLIP's text tower was trained without a padding mask (pads = </s>, pooled at the
    # last position): optimum exports it without attention_mask, so compare the same way.
    kwargs = {"input_ids": batch["input_ids"]}
    if kind == "clip":
        kwargs["attention_mask"] = batch["attention_mask"]
    with torch.no_grad():
        return model.get_text_features(**kwargs).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_fields_and_files(kind, hf_exports, hf_checkouts):
    out = hf_exports[kind]
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "retllm-clip-onnx" and m["format_version"] == 1
    assert m["family"] == f"hf_{kind}"
    assert m["architecture"] == {"clip": "CLIPModel", "siglip": "SiglipModel"}[kind]
    assert m["embed_dim"] == {"clip": 24, "siglip": 32}[kind]
    assert m["source"]["kind"] == "hf-checkout" and m["source"]["model_type"] == kind
    weights = hf_checkouts[kind] / "model.safetensors"
    assert m["source"]["weights"] == {"model.safetensors": sha256_file(weights)}
    pre = m["preprocess"]
    assert pre["crop_rounding"] == "floor" and pre["rgb_first"] is True and pre["interpolation"] == "bicubic"
    if kind == "clip":
        assert pre["size"] == CLIP_SIZE and pre["resize_mode"] == "shortest"
        assert pre["mean"] == [0.48145466, 0.4578275, 0.40821073]
    else:
        assert pre["size"] == SIGLIP_SIZE and pre["resize_mode"] == "squash"
        assert pre["mean"] == [0.5, 0.5, 0.5] and pre["std"] == [0.5, 0.5, 0.5]
    tok = m["tokenizer"]
    assert tok["kind"] == "hf_tokenizers" and tok["file"] == "tokenizer.json"
    assert tok["sha256"] == sha256_file(out / "tokenizer.json")
    assert tok["check"]["mismatches"] == 0 and tok["check"]["strings"] > 50
    if kind == "clip":
        assert tok["context_length"] == 77 and tok["pad_id"] == tok["eos_id"] == 49407
        assert tok["input_names"] == ["input_ids", "attention_mask"] and "canonicalize" not in tok
    else:
        assert tok["context_length"] == SIGLIP_CONTEXT and tok["pad_id"] == tok["eos_id"] == 1
        assert tok["input_names"] == ["input_ids"]
        assert tok["canonicalize"] == "siglip" and tok["lowercase"] is True
    assert "optimum-onnx" in m["exporter"]["image"] and "Extractor" in m["exporter"]["text"]
    # an int8 variant exists when a tower kept int8 on this CPU (its int8 kernels decide)
    kept = {t: q["kept"] for t, q in m["quantization"]["towers"].items()}
    assert set(kept) == {"image", "text"}
    assert set(m["variants"]) == ({"fp32", "int8"} if "int8" in kept.values() else {"fp32"})
    assert m["default_variant"] == ("int8" if "int8" in kept.values() else "fp32")
    for variant, towers in m["variants"].items():
        for tower, entry in towers.items():
            path = out / entry["file"]
            assert sha256_file(path) == entry["sha256"], (variant, tower)
            assert path.stat().st_size == entry["bytes"]
            assert entry["output"] == f"{tower}_embeds"
    for tower in ("image", "text"):
        assert m["parity"]["fp32"][tower]["min_cosine"] >= 0.99999
        assert m["parity"]["fp32"][tower]["max_abs_diff"] < 1e-5  # both sides L2-normalised
        assert m["parity"].get("int8", m["parity"]["fp32"])[tower]["mean_cosine"] >= 0.999  # int8 or fp32
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        assert (out / name).is_file()
    assert not any(p.suffix in (".safetensors", ".bin") for p in out.iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_matches_transformers_end_to_end(kind, hf_exports, hf):
    """Our PIL/numpy pixels + tokenizer + ONNX vs the HF processor + get_*_features."""
    model, processor = hf[kind]
    images = _images()
    with torch.no_grad():
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        ref_img = model.get_image_features(pixel_values=pixels).numpy()
    fp32 = load_encoder(hf_exports[kind], variant="fp32", draft_factor=None)
    length = fp32.manifest.tokenizer["context_length"]
    ref_txt = _hf_text_features(kind, model, processor, TEXTS, length)
    assert _cos(fp32.embed_images(images), ref_img).min() >= 0.99999
    assert _cos(fp32.embed_texts(TEXTS), ref_txt).min() >= 0.99999
    int8 = load_encoder(hf_exports[kind], draft_factor=None)  # int8, or fp32 where no tower kept int8
    assert _cos(int8.embed_images(images), ref_img).mean() >= 0.999
    assert _cos(int8.embed_texts(TEXTS), ref_txt).mean() >= 0.999
    # dynamic batch: one at a time equals batched
    one = np.concatenate([fp32.embed_texts([t]) for t in TEXTS])
    assert _cos(one, fp32.embed_texts(TEXTS)).min() > 0.99999


@pytest.mark.parametrize("kind", KINDS)
def test_pixels_match_the_hf_image_processor(kind, hf_exports, hf, hf_checkouts):
    """Bit-exact with the (default, PIL) slow processor; the torchvision one differs slightly."""
    from transformers import AutoImageProcessor

    _model, processor = hf[kind]
    cfg = load_encoder(hf_exports[kind]).preprocess_config
    images = _images()
    if kind == "clip":  # CLIPImageProcessor converts any mode to RGB first, as we do
        images += [images[0].convert(mode) for mode in ("L", "RGBA", "P", "CMYK")]
    diffs = []
    for img in images:
        ref = processor.image_processor(images=img, return_tensors="np")["pixel_values"][0]
        got = preprocess(img, cfg)
        assert got.dtype == np.float32 and got.shape == ref.shape
        diffs.append(float(np.abs(got - ref).max()))
    assert max(diffs) == 0.0, diffs
    fast = AutoImageProcessor.from_pretrained(hf_checkouts[kind], use_fast=True)
    fast_diff = max(
        float(
            np.abs(
                preprocess(img, cfg) - fast(images=img, return_tensors="pt")["pixel_values"][0].numpy()
            ).max()
        )
        for img in _images()
    )
    assert fast_diff < 0.05, f"max abs diff to the torchvision ('fast') processor: {fast_diff}"


def test_clip_resize_then_crop_matches_hf():
    """shortest_edge above the crop size (resize 72, crop 64): our resize_size path."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    cfg = hf_preprocess_config(proc.to_dict(), "clip")
    assert cfg.size == 64 and cfg.resize_size == 72 and cfg.short_side == 72
    for img in _images():
        ref = proc(images=img, return_tensors="np")["pixel_values"][0]
        assert np.array_equal(preprocess(img, cfg), ref), img.size


@pytest.mark.parametrize("kind", KINDS)
def test_token_ids_match_the_hf_tokenizer(kind, hf_exports, hf_checkouts):
    from retllm_lite.quantize.hf_clip import _samples
    from transformers import AutoTokenizer

    from retllm_lite.encode.tokenizers import make_tokenizer

    ref = AutoTokenizer.from_pretrained(hf_checkouts[kind])
    assert type(ref).__name__ == {"clip": "CLIPTokenizerFast", "siglip": "SiglipTokenizer"}[kind]
    m = json.loads((hf_exports[kind] / "manifest.json").read_text())
    ours = make_tokenizer(m["tokenizer"], hf_exports[kind])
    texts = [*TEXTS, *_samples(n_random=200, seed=7)]
    length = m["tokenizer"]["context_length"]
    expected = ref(texts, padding="max_length", max_length=length, truncation=True)
    got = ours(texts)
    for key in m["tokenizer"]["input_names"]:
        bad = [t for i, t in enumerate(texts) if not np.array_equal(got[key][i], expected[key][i])]
        assert not bad, (key, bad[:3])
    # a truncated row still ends with the end token
    assert got["input_ids"][3, -1] == m["tokenizer"]["eos_id"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_finds_itself_first(kind, hf_exports, tmp_path):
    from retllm_lite.index.indexer import Indexer
    from retllm_lite.index.store import Index
    from retllm_lite.pipeline import Retriever

    photos = tmp_path / "photos"
    files = make_photo_folder(photos, 8, start_seed=100)
    encoder = load_encoder(hf_exports[kind])
    with Index.open(tmp_path / "idx", writable=True) as idx:
        report = Indexer(idx, encoder, batch_size=4).index_folders([photos])
    assert report.indexed == 8 and report.failed == 0
    with Retriever(Index.open(tmp_path / "idx"), encoder) as r:
        for f in files:
            hits = r.search(image=f, k=3)
            assert hits[0].path == str(f)
            assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert len(r.search(text="a photo", k=3)) == 3


def test_ready_made_onnx_download_gets_a_manifest(hf_exports, hf, tmp_path):
    """write_hf_manifest on towers exported by someone else, laid out like a hub ONNX repo."""
    src = hf_exports["clip"]
    dl = tmp_path / "clip-download"
    (dl / "onnx").mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dl / name)
    shutil.copy(src / "image.onnx", dl / "onnx" / "vision_model.onnx")
    shutil.copy(src / "text.onnx", dl / "onnx" / "text_model.onnx")
    # the files our default variant runs (int8, or fp32 for a tower that fell back on this CPU)
    ours = json.loads((src / "manifest.json").read_text())
    runs = ours["variants"][ours["default_variant"]]
    shutil.copy(src / runs["image"]["file"], dl / "onnx" / "vision_model_quantized.onnx")
    shutil.copy(src / runs["text"]["file"], dl / "onnx" / "text_model_quantized.onnx")
    variants = {
        "fp32": {"image": "onnx/vision_model.onnx", "text": "onnx/text_model.onnx"},
        "int8": {"image": "onnx/vision_model_quantized.onnx", "text": "onnx/text_model_quantized.onnx"},
    }
    m = write_hf_manifest(
        dl,
        name="clip-download",
        source={"kind": "download", "repo": "example/tiny-clip"},
        variants=variants,
        outputs={"image": "image_embeds", "text": "text_embeds"},
        parity=None,
    )
    assert m["parity"] is None and m["family"] == "hf_clip" and m["embed_dim"] == 24
    assert m["variants"]["int8"]["text"]["file"] == "onnx/text_model_quantized.onnx"
    assert m["tokenizer"]["input_names"] == ["input_ids", "attention_mask"]
    assert json.loads((dl / "manifest.json").read_text())["variants"] == m["variants"]
    assert not [p for p in dl.iterdir() if p.name.startswith(".manifest")]
    model, processor = hf["clip"]
    enc = load_encoder(dl, variant="fp32")
    ref = _hf_text_features("clip", model, processor, TEXTS, 77)
    assert _cos(enc.embed_texts(TEXTS), ref).min() >= 0.99999
    mine = load_encoder(src, variant="fp32")
    assert np.allclose(enc.embed_images(_images()), mine.embed_images(_images()), atol=1e-6)
    # what a downloader gets wrong is a clear error, and no manifest
    bad = tmp_path / "bad"
    shutil.copytree(dl, bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(BadModelFile, match="no output 'pooler_output'"):
        write_hf_manifest(bad, name="x", source={}, variants=variants, outputs={"image": "pooler_output"})
    with pytest.raises(BadInput, match="inside the model folder"):
        write_hf_manifest(bad, name="x", source={}, variants={"fp32": {"image": "../x.onnx", "text": "t"}})
    assert not (bad / "manifest.json").exists()


def test_manifest_writer_needs_no_torch_or_transformers(hf_exports, tmp_path):
    """The registry path runs where torch and transformers are not installed."""
    dl = tmp_path / "dl"
    shutil.copytree(hf_exports["siglip"], dl)
    (dl / "manifest.json").unlink()
    code = f"""
import sys
for mod in ("torch", "transformers", "optimum", "onnx"):
    sys.modules[mod] = None  # any import of them fails
from retllm_lite.encode import load_encoder
from retllm_lite.quantize.hf_layout import write_hf_manifest
write_hf_manifest({str(dl)!r}, name="dl", source={{}}, parity=None,
    variants={{"fp32": {{"image": "image.onnx", "text": "text.onnx"}}}})
enc = load_encoder({str(dl)!r})
v = enc.embed_texts(["A photo, of a dog!"])
assert v.shape == (1, 32), v.shape
print("ok", enc.info.variant)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok fp32"


def test_not_clip_or_siglip_is_a_clear_error(hf_checkouts, tmp_path):
    from retllm_lite.quantize.hf_clip import export_hf_clip

    bert = tmp_path / "bert"
    shutil.copytree(hf_checkouts["clip"], bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModel, match=r"model_type 'bert' is not supported") as err:
        export_hf_clip(bert, out, log=lambda m: None)
    assert "CLIPModel" in str(err.value) and "SiglipModel" in str(err.value)
    res = CliRunner().invoke(cli, ["quantize", "clip", "--hf", str(bert), "--out", str(out)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model_type 'bert' is not supported" in lines[0]
    assert not out.exists()


def test_failures_leave_no_partial_output(hf_checkouts, tmp_path, monkeypatch):
    from retllm_lite.quantize import towers
    from retllm_lite.quantize.hf_clip import export_hf_clip
    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    # 1. parity below the bar after optimum's export: refused, nothing written
    monkeypatch.setattr(towers, "FP32_MIN_COSINE", 1.01)
    with pytest.raises(towers.ParityError, match="nothing was written"):
        export_hf_clip(hf_checkouts["siglip"], out, log=lambda m: None)
    monkeypatch.undo()
    # 2. a checkpoint missing the text tower's weights would export random weights: refused
    partial = tmp_path / "partial"
    shutil.copytree(hf_checkouts["clip"], partial)
    weights = load_file(partial / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("text_model.")}, partial / "model.safetensors"
    )
    with pytest.raises(BadModelFile, match=r"lacks \d+ weights of a full CLIPModel"):
        export_hf_clip(partial, out, log=lambda m: None)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_missing_optimum_onnx_is_a_clear_error(hf_checkouts, tmp_path, monkeypatch):
    from retllm_lite.quantize.hf_clip import export_hf_clip

    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)  # as if not installed
    out = tmp_path / "out"
    with pytest.raises(MissingDependency, match="optimum-onnx"):
        export_hf_clip(hf_checkouts["clip"], out, log=lambda m: None)
    res = CliRunner().invoke(cli, ["quantize", "clip", "--hf", str(hf_checkouts["clip"]), "--out", str(out)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimum-onnx" in lines[0] and "retllm-lite[export]" in lines[0]
    assert not out.exists()


def test_cli_hf_export_and_argument_errors(tmp_path):
    checkout = build_tiny_hf_clip(tmp_path / "ck", seed=1)
    out = tmp_path / "m"
    res = CliRunner().invoke(
        cli, ["quantize", "clip", "--hf", str(checkout), "--out", str(out), "--no-int8", "--json"]
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.stdout)
    assert list(manifest["variants"]) == ["fp32"] and manifest["family"] == "hf_clip"
    assert load_encoder(out).embed_texts(["ok"]).shape == (1, 24)
    for args, message in [
        (["ViT-B-32", "--hf", str(checkout)], "give no ARCH"),
        (["--hf", str(checkout), "--random-init"], "give no ARCH"),
        ([], "give an open_clip ARCH"),
        (["--hf", str(tmp_path / "nowhere")], "no such folder"),
    ]:
        res = CliRunner().invoke(cli, ["quantize", "clip", *args, "--out", str(tmp_path / "x")])
        assert res.exit_code == 1 and message in res.stderr, (args, res.output)
    res = CliRunner().invoke(cli, ["quantize", "clip", "--hf", str(checkout), "--out", str(out)])
    assert res.exit_code == 1 and "not empty" in res.stderr
