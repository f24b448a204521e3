"""Hashing files: what a file's bytes are, and whether a model file is the one recorded.

- Content fingerprints (128-bit BLAKE2b; ``fingerprint_bytes``, ``fingerprint_file``)
  recognise a file by its bytes: moved and copied photos, embedding caches.
- SHA-256 (``sha256_file``) is what manifests and hubs record. ``verify_file`` checks a
  model file against it without re-hashing every run: a full hash of a few hundred MB
  costs about a second, so a successful check is remembered by (path, size, mtime_ns,
  sha256) in a small JSON file in the cache dir, and any change to the file invalidates
  it (``force=True`` always re-hashes). ``cached_sha256`` is that memo for callers that
  want the digest itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import BadModelFile
from .paths import cache_dir

_CHUNK = 1 << 20


def fingerprint_bytes(data: bytes) -> str:
    """128-bit BLAKE2b of the content, hex. Fast (about 1 GB/s) and collision-safe in practice."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint_file(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, hex: what manifests and hubs record. Always reads the whole file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_file() -> Path:
    return cache_dir() / "verified-files.json"


def _load_stamps() -> dict:
    try:
        return json.loads(_stamp_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_stamps(stamps: dict) -> None:
    path = _stamp_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def record_verified(path: str | Path, sha256: str) -> None:
    """Remember that ``path`` (as it is now) has this sha256, computed by the caller."""
    path = Path(path)
    st = path.stat()
    stamps = _load_stamps()
    stamps[str(path.resolve())] = [st.st_size, st.st_mtime_ns, sha256]
    _save_stamps(stamps)


def verify_file(path: str | Path, sha256: str, size: int | None = None, force: bool = False) -> None:
    """Raise BadModelFile unless ``path`` exists with the given size and sha256."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise BadModelFile(
            f"{path}: model file missing ({exc.strerror})",
            hint="re-export or re-download the model",
        ) from None
    if size is not None and st.st_size != size:
        raise BadModelFile(
            f"{path}: size {st.st_size} bytes, manifest says {size} (truncated or replaced)",
            hint="re-export or re-download the model",
        )
    actual = sha256_file(path) if force else cached_sha256(path)
    if actual != sha256:
        raise BadModelFile(
            f"{path}: sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…",
            hint="the file is corrupt or was replaced; re-export or re-download the model",
        )
    if force:
        record_verified(path, actual)


def cached_sha256(path: str | Path) -> str:
    """The sha256 of ``path``, re-hashed only when its (size, mtime) changed since last time."""
    path = Path(path)
    st = path.stat()
    stamp = _load_stamps().get(str(path.resolve()))
    if stamp and stamp[:2] == [st.st_size, st.st_mtime_ns]:
        return str(stamp[2])
    sha = sha256_file(path)
    record_verified(path, sha)
    return sha
