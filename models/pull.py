"""``pull``: download a registry model into the models dir, verified and all-or-nothing.

The files go to ``.partial/NAME`` (where an interrupted pull resumes), each one checked
against the checksum the hub reports for it; then the folder becomes a model (a ready-made
CLIP gets our manifest.json from its Hugging Face files, a GGUF pair the VLM manifest),
``pull.json`` records where everything came from, and the folder is renamed to ``NAME``
(or ``.sources/NAME`` for a checkpoint that ``retllm quantize`` turns into the model).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import hub
from ..atomic_dir import replace_dir
from ..errors import ChecksumMismatch, HubUnreachable, ModelNotFound, require
from . import registry, store
from .registry import ModelEntry

PULL_FORMAT = "retllm-pull"
PULL_FORMAT_VERSION = 1


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def offline_error(entry: ModelEntry, reason: str) -> ModelNotFound:
    """The one-line error for a registry model that is not here and cannot be downloaded."""
    return ModelNotFound(
        f"the {entry.kind.upper()} model {entry.name!r} is not on this machine and {reason}",
        hint=store.missing_hint(entry.name, entry.kind),
    )


def pull(
    name_or_entry: str | ModelEntry,
    *,
    offline: bool | None = None,
    force: bool = False,
    progress: bool | None = None,
    announce: Callable[[str], None] | None = None,
    retries: int = 3,
    quantize: bool = False,
) -> dict[str, Any]:
    """Download a registry model (see the module doc); returns a summary of what happened.

    ``announce`` gets one line before the download starts: what, how large, where.
    Offline (``offline`` or RETLLM_OFFLINE / HF_HUB_OFFLINE), a model that is not on disk
    raises ModelNotFound saying what to run elsewhere or which local paths to pass.
    """
    entry = registry.get(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    say = announce or (lambda _msg: None)
    final = store.model_dir(entry.name) if entry.ready else store.source_dir(entry.name)
    if store.is_present(entry) and not force:
        result = _summary(entry, final, "present")
        return _maybe_quantize(entry, result, quantize, say)
    if hub.offline_requested(offline):
        raise offline_error(entry, "downloads are off (--offline, RETLLM_OFFLINE or HF_HUB_OFFLINE)")

    with _pull_lock(entry.name, say):
        if store.is_present(entry) and not force:  # the other pull finished it
            return _maybe_quantize(entry, _summary(entry, final, "present"), quantize, say)
        snap = hub.snapshot(entry.repo, entry.revision)
        files = entry.select(snap.files)
        total = sum(snap.files[f].size or 0 for f in files)
        stage = store.partial_dir(entry.name)
        verb = "resuming the download of" if stage.is_dir() and any(stage.iterdir()) else "downloading"
        where = f"{snap.repo}@{snap.commit[:12]}"
        say(f"{verb} {entry.name} ({_mb(total)}, {len(files)} files) from {where} to {final}")
        stage.mkdir(parents=True, exist_ok=True)
        records = []
        try:
            for path in files:
                records.append(hub.download(snap, path, stage, retries=retries, progress=progress))
        except ChecksumMismatch:
            shutil.rmtree(stage, ignore_errors=True)  # nothing of a bad download is kept
            raise
        record = {
            "format": PULL_FORMAT,
            "format_version": PULL_FORMAT_VERSION,
            "name": entry.name,
            "kind": entry.kind,
            "ready": entry.ready,
            "repo": snap.repo,
            "endpoint": snap.endpoint,
            "revision": entry.revision,
            "commit": snap.commit,
            "license": entry.license,
            "pulled": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": records,
        }
        _make_model(entry, stage, record)
        shutil.rmtree(stage / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        (stage / store.PULL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(stage, final)
    _remember_verified(final, records)
    return _maybe_quantize(entry, _summary(entry, final, "downloaded", record), quantize, say)


@contextlib.contextmanager
def _pull_lock(name: str, say: Callable[[str], None]):
    """One pull of a model at a time (another process waits, then finds it done)."""
    from filelock import FileLock, Timeout

    path = store.lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"another pull of {name} is running; waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _make_model(entry: ModelEntry, stage: Path, record: dict) -> None:
    """Turn the downloaded files into a model folder our loaders read."""
    if not entry.ready:
        return
    source = {
        "repo": record["repo"],
        "revision": record["revision"],
        "commit": record["commit"],
        "endpoint": record["endpoint"],
        "registry": entry.name,
    }
    if entry.kind == "clip":
        from ..quantize.hf_layout import write_hf_manifest

        write_hf_manifest(
            stage,
            name=entry.name,
            source=source,
            variants=entry.clip["variants"],
            outputs=entry.clip.get("outputs"),
            parity=None,
        )
    else:
        _write_vlm_manifest(entry, stage, record, source)


def _quant_type(filename: str) -> str:
    match = re.search(r"(?i)(?:^|[-_.])((?:i?q\d(?:_[a-z0-9]+)*)|bf16|f16|f32)\.gguf$", filename)
    return match.group(1).lower() if match else "unknown"


def _write_vlm_manifest(entry: ModelEntry, stage: Path, record: dict, source: dict) -> None:
    from ..rerank.manifest import FORMAT, FORMAT_VERSION, MANIFEST

    by_path = {f["path"]: f for f in record["files"]}

    def part(filename: str) -> dict:
        f = by_path[filename]
        return {"file": filename, "type": _quant_type(filename), "bytes": f["size"], "sha256": f["sha256"]}

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": record["pulled"],
        "source": source,
        "text": part(entry.vlm["model"]),
        "mmproj": part(entry.vlm["mmproj"]),
        "needs": {k: v for k, v in entry.vlm.items() if k not in ("model", "mmproj")},
        "license": entry.license,
    }
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _remember_verified(final: Path, records: list[dict]) -> None:
    """The files were hashed as they arrived: spare the first load a second full hash."""
    from ..hashing import record_verified

    for f in records:
        path = final / f["path"]
        if path.is_file():
            record_verified(path, f["sha256"])


def _summary(entry: ModelEntry, path: Path, status: str, record: dict | None = None) -> dict[str, Any]:
    record = record or store.read_json(path / store.PULL_RECORD) or {}
    out = {
        "name": entry.name,
        "kind": entry.kind,
        "status": status,
        "path": str(path),
        "repo": entry.repo,
        "commit": record.get("commit"),
        "bytes": sum(f.get("size", 0) for f in record.get("files", [])),
        "files": len(record.get("files", [])),
    }
    if not entry.ready:
        out["ready"] = store.model_dir(entry.name).is_dir()
        out["quantize_command"] = store.shell(store.quantize_command(entry))
    return out


def _maybe_quantize(entry: ModelEntry, result: dict, quantize: bool, say: Callable[[str], None]) -> dict:
    """For a checkpoint entry: run (with ``quantize``) or just report the command that makes it."""
    if entry.ready or not quantize or store.model_dir(entry.name).is_dir():
        return result
    cmd = store.quantize_command(entry)
    if entry.quantize["command"] != "clip":
        raise ModelNotFound(f"run this to make {entry.name}: {store.shell(cmd)}")
    require("open_clip", "export", f"Making {entry.name} with 'retllm quantize clip'")
    from ..quantize.clip import export_open_clip

    say(f"making {entry.name}: {store.shell(cmd)}")
    export_open_clip(
        entry.quantize["arch"],
        store.model_dir(entry.name),
        pretrained=cmd[cmd.index("--pretrained") + 1],
        log=say,
    )
    return {**result, "ready": True, "path": str(store.model_dir(entry.name))}


def ensure(
    name: str,
    kind: str,
    *,
    offline: bool | None = None,
    announce: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> None:
    """First run: pull registry model ``name`` when it is not on disk (announcing it).

    Paths and names that are not in the registry are left to the loaders (which say
    precisely what is wrong). Offline or with the hub unreachable, raises one ModelNotFound
    saying what to run on a connected machine or which local paths to pass.
    """
    if Path(name).expanduser().exists() or os.sep in name:
        return
    entry = registry.find(name)
    if entry is None or store.is_present(entry) or store.model_dir(name).is_dir():
        return
    if entry.kind != kind:
        raise ModelNotFound(f"{name!r} is a {entry.kind.upper()} model, not a {kind.upper()} model")
    if hub.offline_requested(offline):
        raise offline_error(entry, "downloads are off (--offline, RETLLM_OFFLINE or HF_HUB_OFFLINE)")
    try:
        pull(entry, announce=announce, progress=progress)
    except HubUnreachable as exc:
        raise offline_error(entry, exc.message) from None
    if not entry.ready:
        raise ModelNotFound(
            f"{name!r} is downloaded and must be made once",
            hint=f"run: {store.shell(store.quantize_command(entry))}",
        )


def ensure_clip(name_or_path: str | os.PathLike | None = None, **kwargs) -> str:
    """The CLIP model to load (``--clip-model``, $RETLLM_CLIP_MODEL or the default), pulled if needed.

    Keyword arguments go to :func:`ensure` (offline, announce, progress).
    """
    name = str(name_or_path or os.environ.get("RETLLM_CLIP_MODEL") or registry.default_name("clip"))
    ensure(name, "clip", **kwargs)
    return name


def ensure_vlm(
    name_or_path: str | os.PathLike | None = None, mmproj: str | os.PathLike | None = None, **kwargs
) -> tuple[Path, Path]:
    """(text model, projector) of the VLM to use (``--vlm-model``/``--mmproj``, $RETLLM_VLM_MODEL /
    $RETLLM_MMPROJ or the default), pulling registry models first when needed."""
    name = str(name_or_path or os.environ.get("RETLLM_VLM_MODEL") or registry.default_name("vlm"))
    ensure(name, "vlm", **kwargs)
    mm = mmproj or os.environ.get("RETLLM_MMPROJ") or None
    if mm is not None:
        ensure(str(mm), "vlm", **kwargs)  # a registry name: its projector; a path: used as is
    return store.resolve_vlm(name, mm)
