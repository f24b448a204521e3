"""What an indexing run did: ``IndexReport`` (counts, reasons, timings), the same for every indexer."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .scan import RootChanges


@dataclass
class IndexReport:
    scanned: int = 0
    unchanged: int = 0
    indexed: int = 0
    moved: int = 0
    copied: int = 0
    touched: int = 0  # same content, new mtime: nothing re-embedded
    reembedded: int = 0  # transparent images of an index made before PIXELS_VERSION
    unchecked: int = 0  # ... and files that could not be checked for it (checked next run)
    warned: int = 0  # indexed, but the decoder warned (recorded on the item)
    removed: int = 0
    failed: int = 0
    skipped: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    interrupted: bool = False
    ann: str = "none"

    def __iadd__(self, other: IndexReport) -> IndexReport:
        """Combine the reports of several runs in one command (folders, then collections)."""
        for name in (
            "scanned",
            "unchanged",
            "indexed",
            "moved",
            "copied",
            "touched",
            "reembedded",
            "unchecked",
            "warned",
            "removed",
            "failed",
            "skipped",
            "seconds",
            "embed_seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        self.interrupted = self.interrupted or other.interrupted
        self.ann = other.ann
        return self

    def count_scan(self, found: RootChanges) -> None:
        """Add one root's scan (``scan.scan_changes``): files found, unchanged, skipped and why."""
        self.scanned += found.scanned
        self.unchanged += found.unchanged
        self.skipped += len(found.skipped)
        self.reasons.update(reason for _path, reason in found.skipped)

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {
            "scanned": self.scanned,
            "unchanged": self.unchanged,
            "indexed": self.indexed,
            "moved": self.moved,
            "copied": self.copied,
            "touched": self.touched,
            "reembedded": self.reembedded,
            "unchecked": self.unchecked,
            "warned": self.warned,
            "removed": self.removed,
            "failed": self.failed,
            "skipped": self.skipped,
            "reasons": dict(self.reasons),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "interrupted": self.interrupted,
            "ann": self.ann,
        }


def reason_class(error: str) -> str:
    """Group one-line errors into a few reasons for the end-of-run summary."""
    e = error.lower()
    if "empty file" in e:
        return "empty file"
    if "too large" in e:
        return "image too large"
    if "not an image" in e or "cannot identify" in e:
        return "not an image"
    if "cannot read" in e:
        return "unreadable file"
    if "truncated" in e or "cannot decode" in e:
        return "corrupt image"
    return "other error"
