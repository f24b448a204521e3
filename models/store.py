"""Models on disk: where pulled models live, what is there, and names to paths.

::

    <models dir>/                   retllm_lite.paths.models_dir() ($RETLLM_MODELS_DIR, XDG cache)
      NAME/                         a model: manifest.json (+ pull.json when downloaded)
      .sources/NAME/                a downloaded checkpoint that 'retllm quantize' makes NAME from
      .partial/NAME/                a download in progress (resumable); never a model
      .locks/NAME.lock              one pull of NAME at a time

A folder only appears under its name once complete (written beside it, then renamed), so a
half-downloaded model is never taken for a model.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadModelFile, ModelNotFound
from ..paths import models_dir
from . import registry
from .registry import ModelEntry

PULL_RECORD = "pull.json"
MANIFEST = "manifest.json"
SOURCES = ".sources"
PARTIAL = ".partial"
LOCKS = ".locks"


def model_dir(name: str) -> Path:
    return models_dir() / name


def source_dir(name: str) -> Path:
    return models_dir() / SOURCES / name


def partial_dir(name: str) -> Path:
    return models_dir() / PARTIAL / name


def lock_path(name: str) -> Path:
    return models_dir() / LOCKS / f"{name}.lock"


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def detect_kind(directory: Path) -> str | None:
    """'clip' or 'vlm' from a folder's manifest (or pull record); None when unknown."""
    from ..encode.manifest import CLIP_FORMAT
    from ..rerank.manifest import FORMAT as VLM_FORMAT

    fmt = (read_json(directory / MANIFEST) or {}).get("format")
    if fmt == CLIP_FORMAT:
        return "clip"
    if fmt == VLM_FORMAT:
        return "vlm"
    return (read_json(directory / PULL_RECORD) or {}).get("kind")


@dataclass
class LocalModel:
    """A folder in the models dir: a model, a downloaded source, or a partial download."""

    name: str
    path: Path
    state: str  # "ready" | "source" | "partial"
    kind: str | None
    record: dict | None
    entry: ModelEntry | None

    def to_dict(self) -> dict[str, Any]:
        rec = self.record or {}
        return {
            "name": self.name,
            "state": self.state,
            "kind": self.kind,
            "path": str(self.path),
            "bytes": dir_bytes(self.path),
            "repo": rec.get("repo"),
            "commit": rec.get("commit"),
            "registry": self.entry is not None,
        }


def local_models() -> list[LocalModel]:
    """Everything in the models dir, sorted by name (models, then sources, then partials)."""
    root = models_dir()
    found: list[LocalModel] = []
    for state, base in (("ready", root), ("source", root / SOURCES), ("partial", root / PARTIAL)):
        if not base.is_dir():
            continue
        for d in sorted(base.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            record = read_json(d / PULL_RECORD)
            entry = registry.find(d.name)
            kind = detect_kind(d) if state != "partial" else (entry.kind if entry else None)
            found.append(LocalModel(d.name, d, state, kind, record, entry))
    return found


def local_model(name: str) -> LocalModel | None:
    """The model folder of a name: a model if present, else its downloaded source."""
    for state, path in (("ready", model_dir(name)), ("source", source_dir(name))):
        if path.is_dir():
            return LocalModel(
                name, path, state, detect_kind(path), read_json(path / PULL_RECORD), registry.find(name)
            )
    return None


def is_present(entry: ModelEntry) -> bool:
    """True when what ``pull`` makes for this entry is on disk (the model, or its source)."""
    target = model_dir(entry.name) if entry.ready else source_dir(entry.name)
    return (target / (MANIFEST if entry.ready else PULL_RECORD)).is_file()


def quantize_command(entry: ModelEntry) -> list[str]:
    """The 'retllm quantize' command that makes ``entry`` from its downloaded source."""
    src = source_dir(entry.name)
    out = str(model_dir(entry.name))
    q = entry.quantize
    if q.get("command") == "clip":
        record = read_json(src / PULL_RECORD) or {}
        weights = next(
            (f["path"] for f in record.get("files", []) if any(f["path"] in g for g in entry.first_of)),
            entry.first_of[0][0] if entry.first_of else "CHECKPOINT",
        )
        return ["retllm", "quantize", "clip", q["arch"], "--pretrained", str(src / weights), "--out", out]
    return ["retllm", "quantize", "vlm", str(src), "--out", out]


def shell(cmd: list[str]) -> str:
    return shlex.join(cmd)


def remove(name: str) -> list[Path]:
    """Delete a model, its downloaded source and any partial download; returns what was removed."""
    removed = []
    for path in (model_dir(name), source_dir(name), partial_dir(name)):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    if not removed:
        raise ModelNotFound(f"no model {name!r} in {models_dir()}", hint="see 'retllm models list'")
    return removed


# ---------------------------------------------------------------- verify


def verify(name_or_path: str | os.PathLike, force: bool = True) -> list[dict[str, Any]]:
    """Check a model's files against its pull record and manifest; one row per file.

    ``force`` re-hashes every file; without it a file unchanged (size, mtime) since its
    last successful check is taken as verified (retllm_lite.hashing).
    """
    from ..hashing import verify_file

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        local = local_model(str(name_or_path))
        if local is None:
            raise ModelNotFound(f"no model {str(name_or_path)!r} in {models_dir()}")
        path = local.path
    expected: dict[str, tuple[str, int | None, str]] = {}  # file -> (sha256, bytes, where)
    record = read_json(path / PULL_RECORD)
    for f in (record or {}).get("files", []):
        expected[f["path"]] = (f["sha256"], f.get("size"), PULL_RECORD)
    manifest = read_json(path / MANIFEST) or {}
    for variant in (manifest.get("variants") or {}).values():  # CLIP manifest
        for tower in variant.values():
            if isinstance(tower, dict) and tower.get("file") and tower.get("sha256"):
                expected.setdefault(tower["file"], (tower["sha256"], tower.get("bytes"), MANIFEST))
    for part in ("text", "mmproj"):  # VLM manifest
        entry = manifest.get(part)
        if isinstance(entry, dict) and entry.get("file") and entry.get("sha256"):
            expected.setdefault(entry["file"], (entry["sha256"], entry.get("bytes"), MANIFEST))
    if not expected:
        raise BadModelFile(f"{path}: no {PULL_RECORD} or manifest with checksums to verify against")
    rows = []
    for rel, (sha256, size, where) in sorted(expected.items()):
        row: dict[str, Any] = {"file": rel, "ok": True, "checked_against": where}
        try:
            verify_file(path / rel, sha256, size, force=force)
        except BadModelFile as exc:
            row.update(ok=False, error=exc.message)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- names to paths


def local_paths_hint(kind: str) -> str:
    if kind == "vlm":
        return "pass --vlm-model MODEL.gguf --mmproj MMPROJ.gguf (or a folder from 'retllm quantize vlm')"
    return "pass --clip-model DIR (a folder from 'retllm quantize clip ARCH --out DIR')"


def missing_hint(name: str, kind: str) -> str:
    """What to do when a registry model is not here: pull elsewhere and copy, or local paths."""
    return (
        f"on a connected machine run 'retllm models pull {name}' and copy {model_dir(name)} "
        f"to the same place here, or {local_paths_hint(kind)}"
    )


def _not_here(name: str, kind: str) -> ModelNotFound:
    entry = registry.find(name)
    if entry is not None and not entry.ready and (source_dir(name) / PULL_RECORD).is_file():
        return ModelNotFound(
            f"model {name!r} is downloaded but not made yet",
            hint=f"make it with: {shell(quantize_command(entry))}",
        )
    if entry is not None:
        return ModelNotFound(
            f"the {kind.upper()} model {name!r} is not on this machine", hint=missing_hint(name, kind)
        )
    what = "CLIP model" if kind == "clip" else "VLM"
    return ModelNotFound(
        f"no {what} {name!r}: not a folder, a file, or a model in the registry",
        hint=f"see 'retllm models list', or {local_paths_hint(kind)}",
    )


def resolve_clip_dir(name_or_dir: str | os.PathLike | None = None) -> Path:
    """A CLIP model folder from a path, a model name (pulled), $RETLLM_CLIP_MODEL or the default."""
    name = str(name_or_dir or os.environ.get("RETLLM_CLIP_MODEL") or registry.default_name("clip"))
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if os.sep not in name and model_dir(name).is_dir():
        return model_dir(name)
    if path.exists():
        raise ModelNotFound(f"{path}: not a model directory", hint="pass the folder that holds manifest.json")
    if path.parent == models_dir() and registry.find(path.name):  # a pulled model, since removed
        raise _not_here(path.name, "clip")
    raise _not_here(name, "clip")


def resolve_vlm(
    name_or_path: str | os.PathLike | None = None, mmproj: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """(text model GGUF, projector GGUF) of a VLM.

    ``name_or_path``: a registry name (pulled), a folder written by 'retllm quantize vlm'
    (its manifest.json names both files), or a text-model .gguf with ``mmproj``. ``mmproj``
    may itself be a path or a model name (its projector). Defaults: $RETLLM_VLM_MODEL and
    $RETLLM_MMPROJ, else the registry's default VLM.
    """
    from ..rerank.manifest import read_manifest

    name = str(name_or_path or os.environ.get("RETLLM_VLM_MODEL") or registry.default_name("vlm"))
    mmproj = mmproj or os.environ.get("RETLLM_MMPROJ") or None
    mm_path = _resolve_mmproj(str(mmproj)) if mmproj else None
    path = Path(name).expanduser()
    if path.is_file():
        if mm_path is None:
            siblings = sorted(p.name for p in path.parent.glob("mmproj*.gguf"))
            raise ModelNotFound(
                f"{path}: a GGUF model needs its projector (mmproj)",
                hint="pass --mmproj FILE" + (f" (beside it: {', '.join(siblings)})" if siblings else ""),
            )
        return path, mm_path
    directory = path if path.is_dir() else None
    if directory is None and os.sep not in name and model_dir(name).is_dir():
        directory = model_dir(name)
    if directory is None:
        raise _not_here(name, "vlm")
    files = read_manifest(directory)
    return files.model, mm_path or files.mmproj


def _resolve_mmproj(value: str) -> Path:
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.exists() or os.sep in value:
        raise ModelNotFound(f"{path}: no such projector file", hint="pass the mmproj-*.gguf file")
    return resolve_vlm(value)[1]
