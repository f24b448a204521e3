"""Bad model files give one-line typed errors naming the file, never a crash."""

from __future__ import annotations

import shutil

import pytest

from retllm_lite.errors import BadInput, BadModelFile, ModelNotFound
from retllm_lite.rerank.gguf_header import read_gguf_header
from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
from retllm_lite.rerank.scorer import Item


def _load(model, mmproj):
    return LlamaMtmdScorer(model, mmproj, n_threads=1)


def _one_line(exc: pytest.ExceptionInfo, *names: str) -> str:
    text = str(exc.value)
    assert "\n" not in text
    for name in names:
        assert name in text
    return text


def test_missing_mmproj(tiny_vlm_f16, tmp_path):
    with pytest.raises(ModelNotFound) as exc:
        _load(tiny_vlm_f16.model, None)
    assert "mmproj" in _one_line(exc, str(tiny_vlm_f16.model))
    gone = tmp_path / "mmproj-gone.gguf"
    with pytest.raises(ModelNotFound) as exc:
        _load(tiny_vlm_f16.model, gone)
    _one_line(exc, str(gone))


def test_missing_model_file(tiny_vlm_f16, tmp_path):
    with pytest.raises(ModelNotFound) as exc:
        _load(tmp_path / "nope.gguf", tiny_vlm_f16.mmproj)
    _one_line(exc, "nope.gguf")


def test_text_model_passed_as_mmproj(tiny_vlm_f16):
    with pytest.raises(BadModelFile) as exc:
        _load(tiny_vlm_f16.model, tiny_vlm_f16.model)
    assert "not a multimodal projector" in _one_line(exc, str(tiny_vlm_f16.model))


def test_mmproj_passed_as_model(tiny_vlm_f16):
    with pytest.raises(BadModelFile) as exc:
        _load(tiny_vlm_f16.mmproj, tiny_vlm_f16.mmproj)
    assert "projector" in _one_line(exc, str(tiny_vlm_f16.mmproj))


@pytest.mark.parametrize("which", ["model", "mmproj"])
@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0005])
def test_truncated_file(tiny_vlm_f16, tmp_path, which, keep):
    files = {"model": tiny_vlm_f16.model, "mmproj": tiny_vlm_f16.mmproj}
    src = files[which]
    data = src.read_bytes()
    cut = tmp_path / src.name
    cut.write_bytes(data[: max(8, int(len(data) * keep))])
    files[which] = cut
    with pytest.raises(BadModelFile) as exc:
        _load(files["model"], files["mmproj"])
    assert "truncated" in _one_line(exc, str(cut))


def test_not_a_gguf_file(tiny_vlm_f16, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(BadModelFile) as exc:
        _load(fake, tiny_vlm_f16.mmproj)
    assert "not a GGUF file" in _one_line(exc, str(fake))


def test_corrupt_header_counts(tiny_vlm_f16, tmp_path):
    data = bytearray(tiny_vlm_f16.model.read_bytes()[:4096])
    data[8:16] = (2**40).to_bytes(8, "little")  # absurd tensor count
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadModelFile) as exc:
        read_gguf_header(bad)
    _one_line(exc, str(bad))


def test_projector_from_another_model(tiny_vlm_f16, tmp_path):
    # A well-formed GGUF whose projection width does not fit the text model.
    info = read_gguf_header(tiny_vlm_f16.mmproj)
    assert info.metadata["clip.vision.projection_dim"] == 256
    data = bytearray(tiny_vlm_f16.mmproj.read_bytes())
    key = b"clip.vision.projection_dim"
    at = data.index(key) + len(key) + 4  # skip the u32 value type
    data[at : at + 4] = (128).to_bytes(4, "little")
    other = tmp_path / "mmproj-other.gguf"
    other.write_bytes(bytes(data))
    with pytest.raises(BadModelFile) as exc:
        _load(tiny_vlm_f16.model, other)
    assert "same checkpoint" in _one_line(exc, str(other))


def test_good_files_still_load_after_bad_ones(tiny_vlm_f16, tmp_path):
    shutil.copy(tiny_vlm_f16.model, tmp_path / "m.gguf")
    with _load(tmp_path / "m.gguf", tiny_vlm_f16.mmproj) as s:
        assert 0 < s.score_pairs("a cat", ["a cat"])[0].p_true < 1


def test_missing_and_unreadable_images(f16_scorer, tmp_path):
    with pytest.raises(BadInput) as exc:
        f16_scorer.score_pairs(Item(image=tmp_path / "gone.jpg"), ["a cat"])
    _one_line(exc, "gone.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(BadInput) as exc:
        f16_scorer.score_pairs("a cat", [Item(image=junk)])
    _one_line(exc, "junk.jpg")
    # the scorer is still usable afterwards
    assert 0 < f16_scorer.score_pairs("a cat", ["a dog"])[0].p_true < 1


def test_prompt_longer_than_the_context(tiny_vlm_f16):
    with LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, n_ctx=64, n_batch=64,
                         n_threads=1) as s:  # fmt: skip
        long_text = " ".join(["a small dog running on the beach"] * 20)
        for fast in (True, False):
            with pytest.raises(BadInput) as exc:
                s.score_pairs(long_text, ["a cat"], fast=fast)
            assert "n_ctx" in _one_line(exc)
        assert 0 < s.score_pairs("a cat", ["a dog"])[0].p_true < 1
