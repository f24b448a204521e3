"""The manifest a converted VLM directory carries (written by ``quantize.vlm.convert_vlm``).

``manifest.json`` names the text model and projector files with their types, sizes and
SHA-256, what they were converted from and with, and the score a smoke pair got right
after conversion. Reading it is search-time code, so it lives here (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retllm_lite.errors import BadModelFile, ModelNotFound
from retllm_lite.hashing import verify_file

FORMAT = "retllm-lite/vlm-gguf"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class VlmFiles:
    directory: Path
    model: Path
    mmproj: Path
    manifest: dict[str, Any]


def read_manifest(directory: str | Path, *, verify: bool = True) -> VlmFiles:
    """The files of a converted VLM, checked against the manifest's size and sha256.

    The check hashes a file once and remembers it by (path, size, mtime) (see
    ``retllm_lite.hashing``), so loading a multi-GB model again costs nothing.
    """
    d = Path(directory).expanduser()
    path = d / MANIFEST
    if not path.is_file():
        raise ModelNotFound(f"no {MANIFEST} in {d}", hint="convert the model with: retllm quantize vlm")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadModelFile(f"{path} is not readable JSON ({exc})", hint="convert the model again") from exc
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise BadModelFile(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest",
            hint="convert the model again with this version",
        )
    files = {}
    for part in ("text", "mmproj"):
        entry = data.get(part) or {}
        f = d / str(entry.get("file", ""))
        if not entry.get("file") or not f.is_file():
            raise ModelNotFound(
                f"{part} file listed in {path} is missing: {f}", hint="convert the model again"
            )
        if verify:
            verify_file(f, str(entry.get("sha256")), entry.get("bytes"))
        files[part] = f
    return VlmFiles(directory=d, model=files["text"], mmproj=files["mmproj"], manifest=data)
