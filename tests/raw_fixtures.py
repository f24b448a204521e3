"""Minimal DNG files that LibRaw (rawpy) opens, written by the tests (never downloaded).

A DNG is a TIFF with a few extra tags. ``write_dng`` lays one out by hand: the raw
image is a 16-bit RGGB Bayer mosaic sampled from an RGB picture (so a demosaic gives the
picture back, roughly), with the DNG tags LibRaw needs to identify and colour it
(DNGVersion, UniqueCameraModel, CFA pattern, ColorMatrix1, AsShotNeutral, black/white
levels), camera make and model, an Orientation and, optionally, an EXIF DateTimeOriginal.
With ``preview=True`` IFD0 is a baseline JPEG preview (NewSubFileType 1, the way cameras
embed one) and the mosaic sits in a SubIFD; without it IFD0 is the mosaic itself.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

# TIFF field types
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _SRATIONAL = 1, 2, 3, 4, 5, 10
_SIZES = {_BYTE: 1, _ASCII: 1, _SHORT: 2, _LONG: 4, _RATIONAL: 8, _SRATIONAL: 8}
WHITE = 4095


def _mosaic(rgb: np.ndarray) -> np.ndarray:
    """RGGB Bayer samples (uint16, 0..WHITE) of an RGB uint8 picture."""
    h, w, _ = rgb.shape
    lin = (rgb.astype(np.float64) / 255.0) ** 2.2 * WHITE
    out = np.empty((h, w), np.uint16)
    out[0::2, 0::2] = lin[0::2, 0::2, 0]
    out[0::2, 1::2] = lin[0::2, 1::2, 1]
    out[1::2, 0::2] = lin[1::2, 0::2, 1]
    out[1::2, 1::2] = lin[1::2, 1::2, 2]
    return out


class _Ifd:
    def __init__(self) -> None:
        self.tags: list[tuple[int, int, list | bytes]] = []

    def add(self, tag: int, typ: int, values: list | bytes | str) -> None:
        if isinstance(values, str):
            values = values.encode("ascii") + b"\0"
        self.tags.append((tag, typ, values))


def _pack(typ: int, values: list | bytes) -> bytes:
    if typ in (_BYTE, _ASCII):
        return bytes(values)
    if typ == _SHORT:
        return struct.pack(f"<{len(values)}H", *values)
    if typ == _LONG:
        return struct.pack(f"<{len(values)}I", *values)
    fmt = "<ii" if typ == _SRATIONAL else "<II"
    return b"".join(struct.pack(fmt, *v) for v in values)


def _count(typ: int, values: list | bytes) -> int:
    return len(values)


def _layout(ifds: list[_Ifd], blobs: list[bytes]) -> bytes:
    """Header, then data blobs, then IFDs (IFD0 chain = ifds[0] only; others are SubIFDs).

    Tag values may refer to blob offsets and IFD offsets through the placeholders
    ('blob', i) and ('ifd', i), resolved here.
    """
    out = bytearray(b"II*\0\0\0\0\0")
    blob_at = []
    for b in blobs:
        if len(out) % 2:
            out += b"\0"
        blob_at.append(len(out))
        out += b
    # sizes of each IFD with its out-of-line values
    ifd_at = []
    cursor = len(out) + (len(out) % 2)
    for ifd in ifds:
        ifd_at.append(cursor)
        extra = 0
        for _tag, typ, values in ifd.tags:
            n = _SIZES[typ] * _count(typ, values)
            if n > 4:
                extra += n + (n % 2)
        cursor += 2 + 12 * len(ifd.tags) + 4 + extra

    def resolve(values):
        if isinstance(values, bytes):
            return values
        res = []
        for v in values:
            if isinstance(v, tuple) and v and v[0] == "blob":
                res.append(blob_at[v[1]])
            elif isinstance(v, tuple) and v and v[0] == "ifd":
                res.append(ifd_at[v[1]])
            else:
                res.append(v)
        return res

    if len(out) % 2:
        out += b"\0"
    for i, ifd in enumerate(ifds):
        assert len(out) == ifd_at[i], (len(out), ifd_at[i])
        tags = sorted(ifd.tags, key=lambda t: t[0])
        values_at = ifd_at[i] + 2 + 12 * len(tags) + 4
        entries = bytearray(struct.pack("<H", len(tags)))
        heap = bytearray()
        for tag, typ, values in tags:
            data = _pack(typ, resolve(values))
            count = _count(typ, values)
            if len(data) <= 4:
                entries += struct.pack("<HHI", tag, typ, count) + data.ljust(4, b"\0")
            else:
                entries += struct.pack("<HHII", tag, typ, count, values_at + len(heap))
                heap += data + (b"\0" if len(data) % 2 else b"")
        entries += struct.pack("<I", 0)  # no next IFD
        out += entries + heap
    struct.pack_into("<I", out, 4, ifd_at[0])
    return bytes(out)


def _raw_tags(ifd: _Ifd, width: int, height: int, strip: int) -> None:
    ifd.add(254, _LONG, [0])  # NewSubFileType: the full-resolution raw
    ifd.add(256, _LONG, [width])
    ifd.add(257, _LONG, [height])
    ifd.add(258, _SHORT, [16])
    ifd.add(259, _SHORT, [1])  # uncompressed
    ifd.add(262, _SHORT, [32803])  # PhotometricInterpretation: CFA
    ifd.add(273, _LONG, [("blob", strip)])
    ifd.add(277, _SHORT, [1])
    ifd.add(278, _LONG, [height])
    ifd.add(279, _LONG, [width * height * 2])
    ifd.add(284, _SHORT, [1])
    ifd.add(33421, _SHORT, [2, 2])  # CFARepeatPatternDim
    ifd.add(33422, _BYTE, [0, 1, 1, 2])  # CFAPattern: RGGB
    ifd.add(50714, _LONG, [0])  # BlackLevel
    ifd.add(50717, _LONG, [WHITE])  # WhiteLevel


def _dng_tags(ifd: _Ifd, make: str, model: str, orientation: int) -> None:
    ifd.add(271, _ASCII, make)
    ifd.add(272, _ASCII, model)
    ifd.add(274, _SHORT, [orientation])
    ifd.add(50706, _BYTE, [1, 4, 0, 0])  # DNGVersion
    ifd.add(50707, _BYTE, [1, 1, 0, 0])  # DNGBackwardVersion
    ifd.add(50708, _ASCII, f"{make} {model}")  # UniqueCameraModel
    # ColorMatrix1 (XYZ -> camera): the sRGB primaries' inverse, so the camera space is linear sRGB
    m = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]
    ifd.add(50721, _SRATIONAL, [(round(v * 10000), 10000) for v in m])
    ifd.add(50728, _RATIONAL, [(1, 1), (1, 1), (1, 1)])  # AsShotNeutral
    ifd.add(50778, _SHORT, [21])  # CalibrationIlluminant1: D65


def write_dng(
    path,
    rgb: np.ndarray,
    preview: bool,
    orientation: int = 1,
    make: str = "RetllmTest",
    model: str = "Bayer 1",
    taken: str | None = None,
    preview_rgb: np.ndarray | None = None,
) -> bytes:
    """Write a DNG of ``rgb`` (uint8 HxWx3, even sizes) to ``path``; returns its bytes.

    ``taken`` ("YYYY:MM:DD HH:MM:SS") goes into an EXIF IFD as DateTimeOriginal.
    ``preview_rgb`` is what the embedded JPEG preview shows (default: ``rgb``).
    """
    h, w, _ = rgb.shape
    assert h % 2 == 0 and w % 2 == 0
    mosaic = _mosaic(rgb).astype("<u2").tobytes()
    blobs = [mosaic]
    ifds: list[_Ifd] = []
    exif = None
    if taken is not None:
        exif = _Ifd()
        exif.add(36867, _ASCII, taken)  # DateTimeOriginal
    if preview:
        jpeg = io.BytesIO()
        Image.fromarray(preview_rgb if preview_rgb is not None else rgb).save(jpeg, "JPEG", quality=95)
        blobs.append(jpeg.getvalue())
        ifd0 = _Ifd()
        ph, pw = (preview_rgb if preview_rgb is not None else rgb).shape[:2]
        ifd0.add(254, _LONG, [1])  # a reduced-resolution image: the preview
        ifd0.add(256, _LONG, [pw])
        ifd0.add(257, _LONG, [ph])
        ifd0.add(258, _SHORT, [8, 8, 8])
        ifd0.add(259, _SHORT, [7])  # JPEG
        ifd0.add(262, _SHORT, [6])  # YCbCr
        ifd0.add(273, _LONG, [("blob", 1)])
        ifd0.add(277, _SHORT, [3])
        ifd0.add(278, _LONG, [ph])
        ifd0.add(279, _LONG, [len(blobs[1])])
        ifd0.add(284, _SHORT, [1])
        _dng_tags(ifd0, make, model, orientation)
        raw = _Ifd()
        _raw_tags(raw, w, h, 0)
        ifd0.add(330, _LONG, [("ifd", 1)])  # SubIFDs
        ifds = [ifd0, raw]
    else:
        ifd0 = _Ifd()
        _raw_tags(ifd0, w, h, 0)
        _dng_tags(ifd0, make, model, orientation)
        ifds = [ifd0]
    if exif is not None:
        ifds[0].add(34665, _LONG, [("ifd", len(ifds))])  # ExifIFD
        ifds.append(exif)
    data = _layout(ifds, blobs)
    with open(path, "wb") as f:
        f.write(data)
    return data
