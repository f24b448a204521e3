"""When a photo was taken and with which camera, read from its EXIF for the catalog.

The capture time is EXIF DateTimeOriginal (else DateTimeDigitized): the camera's local
clock, with no time zone, stored as ``YYYY-MM-DDTHH:MM:SS`` with ``taken_source='exif'``.
A file without a usable one gets ``taken_source='mtime'`` and no ``taken``: its date is
the file's modification time, read from the catalog's ``mtime_ns`` when asked
(``dates.item_date``), so it follows a touched file. The camera is EXIF Make and Model
("Canon EOS R5", the make not repeated).

EXIF is read from the header only: through Pillow for JPEG, PNG, WebP, TIFF, AVIF and
HEIC (pillow-heif), and straight from the TIFF structure of TIFF-based camera RAW files
(DNG, NEF, CR2, ARW, ...), which Pillow cannot open as images. Nothing here raises: an
unreadable or absent EXIF is the mtime fallback.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ..encode import formats
from ..pil_warnings import recorded
from .catalog import Catalog

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME_DIGITIZED = 0x9004
_MAKE = 0x010F
_MODEL = 0x0110
_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?")
_TIFF_MAGIC = (b"II*\0", b"MM\0*")


@dataclass(frozen=True)
class Capture:
    taken: str | None  # "YYYY-MM-DDTHH:MM:SS", camera-local; None with source "mtime"
    source: str  # "exif" | "mtime"
    camera: str | None

    def columns(self) -> dict[str, str | None]:
        """The catalog columns this fills (``taken``, ``taken_source``, ``camera``)."""
        return {"taken": self.taken, "taken_source": self.source, "camera": self.camera}


NO_EXIF = Capture(None, "mtime", None)


def parse_exif_datetime(value: object) -> str | None:
    """EXIF ``2023:07:14 10:22:01`` -> ``2023-07-14T10:22:01``; None for blanks and nonsense."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    m = _EXIF_DATE.match(value.strip("\x00 "))
    if not m:
        return None
    try:
        when = dt.datetime(*(int(g) for g in m.groups(default="0")))
    except ValueError:  # 0000:00:00 00:00:00 and other placeholders
        return None
    if when.year < 1826:  # before the first photograph: a camera clock never set
        return None
    return when.isoformat(timespec="seconds")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("\x00", " ").split())
    return "".join(c for c in text if c.isprintable())[:100] or None


def camera_name(make: object, model: object) -> str | None:
    """'Canon' + 'Canon EOS R5' -> 'Canon EOS R5'; 'Apple' + 'iPhone 15' -> 'Apple iPhone 15'."""
    make_s, model_s = _text(make), _text(model)
    if make_s and model_s:
        first = make_s.split()[0].lower()
        return model_s if model_s.lower().startswith(first) else f"{make_s} {model_s}"
    return model_s or make_s


def _exif_of(data: bytes, name: bytes | str | None) -> Image.Exif | None:
    if name is not None and formats.kind_of(name) == "raw":
        if data[:4] not in _TIFF_MAGIC:
            return None  # CR3, RAF, ORF, RW2 ...: not plain TIFF; their dates fall back to mtime
        exif = Image.Exif()
        exif.load(data)
        return exif
    if name is None or formats.kind_of(name) == "heif":
        formats.register_heif()
    with Image.open(io.BytesIO(data)) as img:  # header only: no pixels are decoded
        return img.getexif()


def read_capture(data: bytes, name: bytes | str | None = None) -> Capture:
    """The capture time and camera in a photo's EXIF (``NO_EXIF`` where there are none)."""
    try:
        with recorded():  # Pillow's complaints about odd EXIF are not printed
            exif = _exif_of(data, name)
            if exif is None:
                return NO_EXIF
            sub = exif.get_ifd(_EXIF_IFD)
            taken = parse_exif_datetime(sub.get(_DATETIME_ORIGINAL)) or parse_exif_datetime(
                sub.get(_DATETIME_DIGITIZED)
            )
            camera = camera_name(exif.get(_MAKE), exif.get(_MODEL))
    except Exception:  # a hostile or damaged header is no date, never a failed index run
        return NO_EXIF
    return Capture(taken, "exif" if taken else "mtime", camera)


def backfill(catalog: Catalog, roots: Sequence[bytes], batch: int = 256) -> int:
    """Read the capture time of indexed photos under ``roots`` that never had it read.

    These are the rows of an index made before schema 2 (``catalog.py``): each file is
    read once, its EXIF recorded, nothing re-embedded. A file changed since it was indexed
    is left to the indexer (its new content gets a capture time with its new vector), one
    that cannot be read now stays NULL and is tried again by the next run. Commits every
    ``batch`` rows, so an interrupted backfill keeps what it did. Returns the rows dated.
    """
    done = 0
    for root in roots:
        rows = list(catalog.undated_under(root))
        for start in range(0, len(rows), batch):
            found: list[tuple[int, Capture]] = []
            for row in rows[start : start + batch]:
                try:
                    with open(row.path, "rb") as f:
                        st = os.fstat(f.fileno())
                        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
                            continue
                        data = f.read()
                except OSError:
                    continue
                found.append((row.id, read_capture(data, row.path)))
            if found:
                with catalog.transaction(bump=False):
                    for item_id, cap in found:
                        catalog.set_capture(item_id, cap.taken, cap.source, cap.camera)
                done += len(found)
    return done
