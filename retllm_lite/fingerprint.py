"""Content fingerprints: recognise a file by its bytes (moves, copies, embedding caches)."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
    """SHA-256 of a file, hex: what manifests and hubs record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
