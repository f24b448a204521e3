"""Convert a Hugging Face vision-language checkout to GGUF for the fine stage.

``convert_vlm`` writes two GGUF files and a manifest into ``out_dir``:

* the text model: the converter's ``--outtype f16|f32`` output, or for ``q8_0`` / ``q4_k_m``
  that f16 file quantized with ``llama_cpp.llama_model_quantize``;
* the projector (mmproj): the converter's ``--mmproj --outtype f16|q8_0|f32`` output. The
  llama quantizer is never run on it (it returns success, and the file then crashes on the
  first image encode).

The result is loaded and must score a smoke pair with finite probabilities before the
manifest (``retllm_lite.rerank.manifest``) is written. Everything is built in a temporary
directory next to ``out_dir`` and renamed into place, so a failed conversion leaves nothing
half-written.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from retllm_lite.quantize.converter import Converter, get_converter, installed_llama_cpp_python

from retllm_lite.atomic_dir import replace_dir
from retllm_lite.errors import BadInput, BadModelFile, require
from retllm_lite.hashing import sha256_file
from retllm_lite.rerank.manifest import FORMAT, FORMAT_VERSION, MANIFEST

TEXT_TYPES = ("f32", "f16", "q8_0", "q4_k_m")
MMPROJ_TYPES = ("f32", "f16", "q8_0")
_QUANT_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
SMOKE_CAPTION = "a photo of a red square on a white background"


def convert_vlm(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    text_type: str = "q4_k_m",
    mmproj_type: str = "f16",
    converter: Converter | None = None,
    llama_cpp_dir: str | Path | None = None,
    name: str | None = None,
    overwrite: bool = False,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Convert ``hf_dir`` into ``out_dir``; returns the manifest (also in manifest.json)."""
    if text_type not in TEXT_TYPES:
        raise BadInput(f"text type must be one of {', '.join(TEXT_TYPES)}, not {text_type}")
    if mmproj_type not in MMPROJ_TYPES:
        raise BadInput(f"mmproj type must be one of {', '.join(MMPROJ_TYPES)}, not {mmproj_type}")
    hf = Path(hf_dir).resolve()
    config_path = hf / "config.json"
    if not config_path.is_file():
        raise BadInput(f"{hf} is not a Hugging Face checkout (no config.json)")
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise BadInput(f"{out} already exists and is not empty", hint="pass overwrite=True")
    conv = converter or get_converter(llama_cpp_dir)
    base = _safe_name(name or hf.name)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.convert-", dir=out.parent))
    stage.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        text_file = stage / f"{base}-{text_type}.gguf"
        if text_type in ("f32", "f16"):
            conv.run(hf, text_file, text_type)
        else:
            f16 = stage / f".{base}-f16.tmp.gguf"
            conv.run(hf, f16, "f16")
            quantize_text_model(f16, text_file, text_type, n_threads=n_threads)
            f16.unlink()
        mmproj_file = stage / f"mmproj-{base}-{mmproj_type}.gguf"
        conv.run(hf, mmproj_file, mmproj_type, mmproj=True)

        smoke = smoke_score(text_file, mmproj_file, n_threads=n_threads)
        config = json.loads(config_path.read_text())
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "path": str(hf),
                "architectures": config.get("architectures"),
                "model_type": config.get("model_type"),
            },
            "text": _file_entry(text_file, text_type),
            "mmproj": _file_entry(mmproj_file, mmproj_type),
            "llama_cpp_python": installed_llama_cpp_python(),
            "converter": conv.version,
            "llama_cpp_commit": conv.llama_cpp_commit,
            "smoke": smoke,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def quantize_text_model(src: Path, dst: Path, text_type: str, *, n_threads: int | None = None) -> None:
    """llama.cpp's quantizer, for the text model only (never an mmproj)."""
    llama_cpp = require("llama_cpp", "rerank", "Quantizing the VLM")
    from retllm_lite.rerank import llama_log
    from retllm_lite.rerank.gguf_header import read_gguf_header

    if read_gguf_header(src, what="text model").is_projector:
        raise BadInput(f"{src} is a projector: quantize it with the converter's --outtype")
    llama_log.install(False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _QUANT_FTYPES[text_type])
    params.nthread = n_threads or max(1, os.cpu_count() or 1)
    res = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if res != 0 or not dst.is_file():
        raise BadModelFile(f"llama.cpp could not quantize {src} to {text_type}: {llama_log.last_error()}")


def smoke_score(text_file: Path, mmproj_file: Path, *, n_threads: int | None = None) -> dict[str, Any]:
    """Load the pair of files and score one synthetic (image, caption) pair."""
    from PIL import Image, ImageDraw

    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
    from retllm_lite.rerank.scorer import Item

    img = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(img).rectangle((24, 24, 72, 72), fill=(220, 30, 30))
    with LlamaMtmdScorer(
        text_file, mmproj_file, n_ctx=2048, n_batch=1024, batch_size=1, n_threads=n_threads
    ) as scorer:
        score = scorer.score_pairs(Item(image=img), [Item(text=SMOKE_CAPTION)])[0]
    values = (score.p_true, score.p_false, score.entropy)
    if not all(0.0 <= v <= 1.0 for v in values):
        raise BadModelFile(f"the converted model scores out of range: {values}")
    return {
        "query": "synthetic 96x96 red square",
        "candidate": SMOKE_CAPTION,
        "p_true": score.p_true,
        "p_false": score.p_false,
        "entropy": score.entropy,
    }


def _file_entry(path: Path, kind: str) -> dict[str, Any]:
    return {"file": path.name, "type": kind, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    return cleaned or "model"
