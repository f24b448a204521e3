"""A folder of hostile files, generated at test time: what a real photo folder holds."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from clip_fixtures import draw_photo

# name -> what must happen: "ok" (indexed) or a substring of the recorded reason
EXPECTED: dict[str, str] = {}


def _jpeg_bytes(seed: int, size=(320, 240), **kw) -> bytes:
    buf = io.BytesIO()
    draw_photo(seed, size).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def make_hostile_folder(root: Path) -> dict[str, str]:
    """Write the corpus under root; returns {relative path: expected outcome}."""
    root.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (root / name).write_bytes(data)
        expect[name] = outcome

    put("good.jpg", _jpeg_bytes(1), "ok")
    put("zero-byte.jpg", b"", "empty file")
    good = _jpeg_bytes(2)
    put("truncated.jpg", good[: len(good) // 3], "truncated")
    png = io.BytesIO()
    draw_photo(3).save(png, "PNG")
    put("truncated.png", png.getvalue()[: len(png.getvalue()) // 2], "decode")
    put("notes.jpg", b"this is a text file with a .jpg name\n" * 20, "not an image")
    # decompression bomb: 20000 x 10000 declared pixels (> 2x PIL's limit), tiny file
    bomb = io.BytesIO()
    Image.new("1", (20000, 10000)).save(bomb, "PNG")
    put("bomb.png", bomb.getvalue(), "too large")
    # unusual modes: all must index
    cmyk = io.BytesIO()
    draw_photo(4).convert("CMYK").save(cmyk, "JPEG")
    put("cmyk.jpg", cmyk.getvalue(), "ok")
    sixteen = io.BytesIO()
    Image.fromarray((np.linspace(0, 65535, 240 * 320).reshape(240, 320)).astype(np.uint16)).save(
        sixteen, "PNG"
    )
    put("16bit.png", sixteen.getvalue(), "ok")
    pal = draw_photo(5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    ptr = io.BytesIO()
    pal.save(ptr, "PNG", transparency=0)
    put("palette-transparent.png", ptr.getvalue(), "ok")
    frames = [draw_photo(10 + i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", gif.getvalue(), "ok")
    webp = io.BytesIO()
    frames[0].save(webp, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    put("animated.webp", webp.getvalue(), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", _jpeg_bytes(6, (300, 200), exif=exif.tobytes()), "ok")
    # names: not UTF-8, very long
    bad_name = os.fsdecode(b"caf\xe9-\xff.jpg")
    (root / bad_name).write_bytes(_jpeg_bytes(7))
    expect[bad_name] = "ok"
    long_name = "l" * 240 + ".jpg"
    put(long_name, _jpeg_bytes(8), "ok")
    # a path longer than PATH_MAX (4096): made with relative mkdirs, unreachable by full path
    deep = root / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)
    depth = 0
    try:
        while depth * 201 < 4300:
            os.mkdir("d" * 200, dir_fd=fd)
            nfd = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        with open(os.open("too-deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(_jpeg_bytes(9))
    finally:
        os.close(fd)
    expect["deep"] = "path too long"
    # symlinks: a loop between two links, a link back to an ancestor, a dangling link
    os.symlink("loop-b.jpg", root / "loop-a.jpg")
    os.symlink("loop-a.jpg", root / "loop-b.jpg")
    expect["loop-a.jpg"] = "symlink loop"
    expect["loop-b.jpg"] = "symlink loop"
    (root / "sub").mkdir()
    (root / "sub" / "inner.jpg").write_bytes(_jpeg_bytes(11))
    expect["sub/inner.jpg"] = "ok"
    os.symlink("..", root / "sub" / "up")
    expect["sub/up"] = "already scanned"
    os.symlink("missing-target.jpg", root / "dangling.jpg")
    expect["dangling.jpg"] = "dangling"
    return expect
