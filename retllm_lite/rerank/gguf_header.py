"""Read and check a GGUF file's header in pure Python, before llama.cpp ever sees it.

``check_vlm_files`` checks a VLM's pair of files (text model and projector) this way.

llama.cpp can abort the process on some malformed files; everything we can check from the
header (magic, version, metadata, tensor table, whether the file is long enough to hold
every tensor) is checked here so the user gets a one-line error instead of a crash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from retllm_lite.errors import BadModelFile, ModelNotFound

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml type id -> (elements per block, bytes per block); from gguf-py's GGML_QUANT_SIZES.
_QK = 256
GGML_BLOCK: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (_QK, 84),
    11: (_QK, 110),
    12: (_QK, 144),
    13: (_QK, 176),
    14: (_QK, 210),
    15: (_QK, 292),
    16: (_QK, 66),
    17: (_QK, 74),
    18: (_QK, 98),
    19: (_QK, 50),
    20: (32, 18),
    21: (_QK, 110),
    22: (_QK, 82),
    23: (_QK, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (_QK, 56),
    30: (1, 2),
    34: (_QK, 54),
    35: (_QK, 66),
    39: (32, 17),
    40: (64, 36),
    41: (128, 18),
    42: (64, 18),
}

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 64  # arrays longer than this are skipped, not kept (token lists)


@dataclass
class GGUFInfo:
    path: Path
    version: int
    n_tensors: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[int, int] = field(default_factory=dict)  # ggml type -> tensor count
    data_offset: int = 0
    data_end: int = 0  # bytes the tensor data needs; 0 when a type's size is unknown
    file_size: int = 0

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    @property
    def is_projector(self) -> bool:
        return self.architecture == "clip"

    @property
    def has_vision(self) -> bool:
        return bool(self.metadata.get("clip.has_vision_encoder"))


class _Reader:
    def __init__(self, fh: BinaryIO, path: Path):
        self.fh = fh
        self.path = path

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise BadModelFile(
                f"{self.path} is truncated (the GGUF header ends early)",
                hint="download or convert the file again",
            )
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, limit: int = 1 << 30) -> str:
        n = self.unpack("<Q")
        if n > limit:
            raise BadModelFile(
                f"{self.path} has a corrupt GGUF header (string of {n} bytes)",
                hint="download or convert the file again",
            )
        return self.read(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        self.fh.seek(n, 1)

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if count > 1 << 32:
                raise BadModelFile(
                    f"{self.path} has a corrupt GGUF header (array of {count})",
                    hint="download or convert the file again",
                )
            if count > _SMALL_ARRAY:
                self._skip_array(etype, count)
                return None
            return [self.value(etype) for _ in range(count)]
        raise BadModelFile(
            f"{self.path} has a corrupt GGUF header (value type {vtype})",
            hint="download or convert the file again",
        )

    def _skip_array(self, etype: int, count: int) -> None:
        if etype in _SCALARS:
            self.skip(struct.calcsize(_SCALARS[etype]) * count)
        elif etype == _STRING:
            for _ in range(count):
                self.skip(self.unpack("<Q"))
        else:
            for _ in range(count):
                self.value(etype)


def read_gguf_header(path: str | Path, *, what: str = "model file") -> GGUFInfo:
    """Parse the header; raise ModelNotFound / BadModelFile naming the file on any problem."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFound(f"{what} not found: {p}", hint="check the path")
    if not p.is_file():
        raise BadModelFile(f"{what} {p} is not a file")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        r = _Reader(fh, p)
        head = fh.read(4)
        if head != MAGIC:
            raise BadModelFile(
                f"{what} {p} is not a GGUF file (starts with {head!r})",
                hint="pass a .gguf file made by llama.cpp's converter",
            )
        version = r.unpack("<I")
        if version not in (2, 3):
            raise BadModelFile(
                f"{what} {p} has unsupported GGUF version {version}",
                hint="convert it again with a current llama.cpp",
            )
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise BadModelFile(
                f"{what} {p} has a corrupt GGUF header", hint="download or convert the file again"
            )
        info = GGUFInfo(path=p, version=version, n_tensors=n_tensors, file_size=size)
        for _ in range(n_kv):
            key = r.string(limit=1 << 16)
            vtype = r.unpack("<I")
            info.metadata[key] = r.value(vtype)
        ends: list[int] = []
        known = True
        for _ in range(n_tensors):
            r.string(limit=1 << 16)
            n_dims = r.unpack("<I")
            if n_dims > 8:
                raise BadModelFile(
                    f"{what} {p} has a corrupt tensor table", hint="download or convert the file again"
                )
            n_el = 1
            for _ in range(n_dims):
                n_el *= r.unpack("<Q")
            ttype = r.unpack("<I")
            offset = r.unpack("<Q")
            info.tensor_types[ttype] = info.tensor_types.get(ttype, 0) + 1
            block = GGML_BLOCK.get(ttype)
            if block is None:
                known = False
            else:
                ends.append(offset + (n_el // block[0]) * block[1])
        align = info.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0:
            align = DEFAULT_ALIGNMENT
        pos = fh.tell()
        info.data_offset = (pos + align - 1) // align * align
        info.data_end = info.data_offset + max(ends, default=0) if known else 0
    if info.data_end and info.data_end > size:
        raise BadModelFile(
            f"{what} {p} is truncated ({size} bytes, its tensors need {info.data_end})",
            hint="download or convert the file again",
        )
    return info


def check_vlm_files(model_path: str | Path, mmproj_path: str | Path | None) -> tuple[GGUFInfo, GGUFInfo]:
    """Check both files from their headers; one-line errors naming the file."""
    info = read_gguf_header(model_path, what="VLM model file")
    if info.is_projector:
        raise BadModelFile(
            f"{model_path} is a multimodal projector (mmproj), not the language model",
            hint="pass the text model .gguf as the model and this file as the mmproj",
        )
    if mmproj_path is None:
        raise ModelNotFound(
            f"no mmproj file given for the VLM {model_path}",
            hint="pass the mmproj-*.gguf converted with --mmproj from the same checkpoint",
        )
    proj = read_gguf_header(mmproj_path, what="mmproj file")
    if not proj.is_projector:
        raise BadModelFile(
            f"{mmproj_path} is not a multimodal projector (its architecture is '{proj.architecture}')",
            hint="pass the mmproj-*.gguf converted with --mmproj from the same checkpoint",
        )
    if not proj.has_vision:
        raise BadModelFile(
            f"{mmproj_path} has no vision encoder (audio-only projector?)",
            hint="pass an mmproj with a vision encoder",
        )
    arch = info.architecture
    n_embd = info.metadata.get(f"{arch}.embedding_length")
    proj_dim = proj.metadata.get("clip.vision.projection_dim")
    if isinstance(n_embd, int) and isinstance(proj_dim, int) and n_embd != proj_dim:
        raise BadModelFile(
            f"{mmproj_path} projects to {proj_dim} dimensions but {model_path} takes {n_embd}",
            hint="use the mmproj converted from the same checkpoint as the model",
        )
    return info, proj
