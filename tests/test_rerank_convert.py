"""convert_vlm (HF -> GGUF text model + projector + manifest) and the converter it uses."""

from __future__ import annotations

import importlib.metadata
import json
import math
import shutil

import pytest
from retllm_lite.quantize.converter import ENV_DIR, SCRIPT, get_converter
from retllm_lite.quantize.vlm import convert_vlm

from retllm_lite.errors import BadInput, BadModelFile, MissingDependency
from retllm_lite.hashing import sha256_file
from retllm_lite.rerank.gguf_header import read_gguf_header
from retllm_lite.rerank.manifest import FORMAT, read_manifest

# ggml type ids (gguf-py GGMLQuantizationType)
F32, F16, Q8_0 = 0, 1, 8


def test_manifest_names_files_with_their_checksums(tiny_vlm_q8, tiny_vlm_hf, vlm_converter):
    m = tiny_vlm_q8.manifest
    assert m["format"] == FORMAT
    assert m["source"]["path"] == str(tiny_vlm_hf.resolve())
    assert m["source"]["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert m["llama_cpp_python"] == importlib.metadata.version("llama-cpp-python")
    assert m["converter"] == vlm_converter.version
    assert m["llama_cpp_commit"] and len(m["llama_cpp_commit"]) == 40
    listed = {p.name for p in tiny_vlm_q8.directory.iterdir()}
    assert listed == {"manifest.json", m["text"]["file"], m["mmproj"]["file"]}
    for part, kind in (("text", "q8_0"), ("mmproj", "q8_0")):
        entry = m[part]
        path = tiny_vlm_q8.directory / entry["file"]
        assert entry["type"] == kind
        assert entry["sha256"] == sha256_file(path)
        assert entry["bytes"] == path.stat().st_size
    for key in ("p_true", "p_false", "entropy"):
        assert math.isfinite(m["smoke"][key]) and 0 <= m["smoke"][key] <= 1
    assert read_manifest(tiny_vlm_q8.directory, verify=True).model.name == m["text"]["file"]


def test_converted_files_have_the_asked_types(tiny_vlm_q8, tiny_vlm_f16, tiny_vlm_f32):
    text = read_gguf_header(tiny_vlm_q8.model)
    assert text.architecture == "gemma3" and Q8_0 in text.tensor_types
    proj = read_gguf_header(tiny_vlm_q8.mmproj)
    assert proj.is_projector and Q8_0 in proj.tensor_types  # the converter's own q8_0
    assert F16 in read_gguf_header(tiny_vlm_f16.model).tensor_types
    assert set(read_gguf_header(tiny_vlm_f32.model).tensor_types) == {F32}
    assert tiny_vlm_q8.model.stat().st_size < 0.6 * tiny_vlm_f16.model.stat().st_size


def test_verify_catches_a_damaged_file(tiny_vlm_f16, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_vlm_f16.directory, copy)
    target = copy / tiny_vlm_f16.manifest["text"]["file"]
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    read_manifest(copy, verify=False)  # without verify: only presence is checked
    with pytest.raises(BadModelFile, match="does not match the manifest"):
        read_manifest(copy)  # verified by default (once per file version)


def test_failed_conversion_leaves_nothing(tiny_vlm_hf, vlm_converter, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_vlm_hf, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    out = tmp_path / "out" / "model"
    with pytest.raises(BadInput) as exc:
        convert_vlm(broken, out, text_type="f16", converter=vlm_converter)
    assert "converter failed" in str(exc.value) and "\n" not in str(exc.value)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no half-written temp dir either


def test_convert_refuses_to_overwrite(tiny_vlm_f16, tiny_vlm_hf, vlm_converter):
    with pytest.raises(BadInput, match="not empty"):
        convert_vlm(tiny_vlm_hf, tiny_vlm_f16.directory, converter=vlm_converter)
    with pytest.raises(BadInput, match="text type"):
        convert_vlm(tiny_vlm_hf, "unused", text_type="q5_1", converter=vlm_converter)
    with pytest.raises(BadInput, match="mmproj type"):
        convert_vlm(tiny_vlm_hf, "unused", mmproj_type="q4_k_m", converter=vlm_converter)


def test_converter_is_reused_once_extracted(vlm_converter, monkeypatch):
    # The session's converter came from the sdist; asking again must not fetch anything.
    again = get_converter(root=vlm_converter.root.parent, download=False)
    assert again == vlm_converter
    assert (again.root / SCRIPT).is_file() and (again.gguf_py / "gguf").is_dir()
    info = json.loads((again.root / "converter.json").read_text())
    assert info["llama_cpp_python"] == importlib.metadata.version("llama-cpp-python")
    # An extracted converter is also a valid llama.cpp tree for the override variable.
    monkeypatch.setenv(ENV_DIR, str(again.root))
    assert get_converter().root == again.root


def test_converter_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(MissingDependency) as exc:
        get_converter(root=tmp_path / "empty", download=False)
    assert ENV_DIR in str(exc.value) and "\n" not in str(exc.value)
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    with pytest.raises(MissingDependency, match=r"not a llama\.cpp checkout"):
        get_converter()


def test_offline_download_fails_cleanly(tmp_path, monkeypatch):
    # No package index reachable: pip gets a closed local port and no cache.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    (tmp_path / "no-links").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(MissingDependency) as exc:
        get_converter(root=tmp_path / "conv")
    text = str(exc.value)
    assert "cannot download the llama-cpp-python" in text and "\n" not in text
    assert not (
        tmp_path / "conv" / f"llama-cpp-python-{importlib.metadata.version('llama-cpp-python')}"
    ).exists()
