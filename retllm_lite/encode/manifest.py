"""The model manifest: what ``retllm quantize clip`` writes next to the ONNX files.

::

    MODEL_DIR/
      manifest.json         format, architecture, source, preprocessing, tokenizer,
                            embed_dim, files (sha256, bytes) per variant, parity figures
      image.onnx text.onnx              fp32 towers (dynamic batch)
      image.int8.onnx text.int8.onnx    int8 towers (settings chosen by measured parity)

The sha256 of ``manifest.json`` itself identifies the model; an index records it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadModelFile, ModelNotFound
from ..hashing import verify_file
from .preprocess import PreprocessConfig

MANIFEST_NAME = "manifest.json"
CLIP_FORMAT = "retllm-clip-onnx"
FORMAT_VERSION = 1
TOWERS = ("image", "text")


@dataclass
class ClipManifest:
    directory: Path
    data: dict
    sha256: str

    @classmethod
    def load(cls, directory: str | Path) -> ClipManifest:
        directory = Path(directory).expanduser()
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise ModelNotFound(
                f"{directory}: no such model directory",
                hint="pass a folder written by 'retllm quantize clip' or a model name",
            )
        try:
            raw = path.read_bytes()
        except OSError:
            raise ModelNotFound(
                f"{directory}: no {MANIFEST_NAME} (not a retllm model directory)",
                hint="create one with 'retllm quantize clip ARCH --out DIR'",
            ) from None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BadModelFile(f"{path}: not valid JSON ({exc})", hint="re-export the model") from None
        if not isinstance(data, dict) or data.get("format") != CLIP_FORMAT:
            kind = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise BadModelFile(
                f"{path}: not a CLIP encoder manifest (format {kind!r})",
                hint="pass a folder written by 'retllm quantize clip'",
            )
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise BadModelFile(
                f"{path}: manifest version {data['format_version']} is newer than this "
                f"retllm-lite understands ({FORMAT_VERSION})",
                hint="upgrade retllm-lite",
            )
        return cls(directory, data, hashlib.sha256(raw).hexdigest())

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.data.get("architecture") or self.directory.name)

    @property
    def embed_dim(self) -> int:
        return int(self.data["embed_dim"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.data.get("preprocess", {}))

    @property
    def tokenizer(self) -> dict:
        return dict(self.data.get("tokenizer", {"kind": "open_clip_bpe", "context_length": 77}))

    @property
    def variants(self) -> list[str]:
        return list(self.data.get("variants", {}))

    def default_variant(self) -> str:
        return "int8" if "int8" in self.variants else "fp32"

    def tower_output(self, variant: str, tower: str) -> str | None:
        """Name of the ONNX output holding the embedding (None: the first output)."""
        return self.data["variants"][variant][tower].get("output")

    def tower_file(self, variant: str, tower: str, verify: bool = True) -> Path:
        try:
            entry = self.data["variants"][variant][tower]
        except KeyError:
            raise ModelNotFound(
                f"{self.directory}: no {variant} {tower} tower in the manifest "
                f"(has {', '.join(self.variants) or 'none'})",
                hint="choose another --variant or re-export the model",
            ) from None
        path = self.directory / entry["file"]
        if verify:
            verify_file(path, entry["sha256"], entry.get("bytes"))
        return path


def int8_summary(data: dict) -> dict[str, str]:
    """Per tower, what the int8 variant runs and where that was decided, in one line each.

    The int8 settings are chosen by measured parity on the exporting machine's CPU, whose
    int8 kernels (VNNI, AMX, plain AVX2) round differently; a tower no setting reproduces
    there stays fp32. Empty for manifests without an int8 variant or exporter record
    (ready-made downloads).
    """
    quant = data.get("quantization") or {}
    towers = quant.get("towers") or {}
    cpu = quant.get("cpu") or {}
    where = f" on {cpu.get('model') or 'a CPU'} ({cpu['int8_kernels']} int8 kernels)" if cpu else ""
    bars = (data.get("parity_thresholds") or {}).get("int8_mean_cosine")
    out: dict[str, str] = {}
    for tower in TOWERS:
        q = towers.get(tower)
        if not q:
            continue
        bar = bars.get(tower) if isinstance(bars, dict) else bars
        if q.get("chosen"):
            c = q["chosen"]
            cos = (q.get("parity") or {}).get("mean_cosine")
            out[tower] = (
                f"int8 {c['weight_type']} per_channel={c['per_channel']} reduce_range={c['reduce_range']}"
                + (f", mean cosine {cos:.5f}" if cos is not None else "")
                + where
            )
        else:
            out[tower] = f"fp32 (no int8 setting met mean cosine {bar}{where})"
    return out
