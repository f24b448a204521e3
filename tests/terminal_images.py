"""Decoders for the terminal image protocols, to check what ``--preview`` draws.

Each returns the images in the order they appear in a byte stream, as PIL images, so a
test can compare them with the photos they should show.
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

GRAPHICS = re.compile(rb"\x1b_G|\x1b\]1337;|\x1bP[0-9;]*q")  # any image sequence at all

_KITTY = re.compile(rb"\x1b_G([^;\x1b]*)(?:;([^\x1b]*))?\x1b\\")
_ITERM2 = re.compile(rb"\x1b\]1337;File=([^:\x07]*):([A-Za-z0-9+/=]*)\x07")
_SIXEL = re.compile(rb"\x1bP[0-9;]*q(.*?)\x1b\\", re.S)


def unwrap_tmux(data: bytes) -> bytes:
    """Undo tmux passthrough: ESC P tmux; <payload with ESC doubled> ESC \\ ."""
    out = re.sub(
        rb"\x1bPtmux;((?:[^\x1b]|\x1b\x1b)*)\x1b\\", lambda m: m.group(1).replace(b"\x1b\x1b", b"\x1b"), data
    )
    return out


def kitty_images(data: bytes) -> list[tuple[dict, Image.Image]]:
    """(control keys of the first chunk, image) for each transmitted image."""
    images, keys, payload = [], None, []
    for m in _KITTY.finditer(data):
        ctrl = dict(kv.split(b"=", 1) for kv in m.group(1).split(b",") if kv)
        if b"a" in ctrl:
            keys, payload = {k.decode(): v.decode() for k, v in ctrl.items()}, []
        if m.group(2):
            payload.append(m.group(2))
        if ctrl.get(b"m", b"0") == b"0" and keys is not None:
            # every chunk but the last is a multiple of 4 characters: decode them one by one
            raw = b"".join(base64.b64decode(chunk) for chunk in payload)
            w, h, fmt = int(keys["s"]), int(keys["v"]), keys.get("f", "32")
            if fmt == "100":
                img = Image.open(io.BytesIO(raw))
            else:
                img = Image.frombytes("RGBA" if fmt == "32" else "RGB", (w, h), raw)
            images.append((keys, img.convert("RGB")))
            keys = None
    return images


def iterm2_images(data: bytes) -> list[tuple[dict, Image.Image]]:
    out = []
    for m in _ITERM2.finditer(data):
        args = dict(kv.split(b"=", 1) for kv in m.group(1).split(b";") if b"=" in kv)
        img = Image.open(io.BytesIO(base64.b64decode(m.group(2))))
        out.append(({k.decode(): v.decode() for k, v in args.items()}, img.convert("RGB")))
    return out


def _numbers(body: bytes, i: int) -> tuple[list[int], int]:
    nums, cur = [], b""
    while i < len(body) and (body[i : i + 1].isdigit() or body[i : i + 1] == b";"):
        if body[i : i + 1] == b";":
            nums.append(int(cur or 0))
            cur = b""
        else:
            cur += body[i : i + 1]
        i += 1
    nums.append(int(cur or 0))
    return nums, i


def decode_sixel(body: bytes) -> Image.Image:
    """A DEC sixel body (after 'q', before ST) as an RGB image."""
    width = height = 0
    palette: dict[int, tuple[int, int, int]] = {}
    color, x, band, i = 0, 0, 0, 0
    px = None
    while i < len(body):
        c = body[i]
        if c == ord('"'):
            (_pan, _pad, width, height), i = _numbers(body, i + 1)
            px = np.zeros((height, width, 3), np.uint8)
            continue
        if c == ord("#"):
            nums, i = _numbers(body, i + 1)
            color = nums[0]
            if len(nums) == 5 and nums[1] == 2:
                palette[color] = tuple(round(v * 255 / 100) for v in nums[2:])
            continue
        repeat = 1
        if c == ord("!"):
            (repeat,), i = _numbers(body, i + 1)
            c = body[i]
        i += 1
        if c == ord("$"):
            x = 0
        elif c == ord("-"):
            x, band = 0, band + 1
        elif 63 <= c <= 126:
            bits = c - 63
            for bit in range(6):
                y = band * 6 + bit
                if bits >> bit & 1 and y < height:
                    px[y, x : min(x + repeat, width)] = palette.get(color, (0, 0, 0))
            x += repeat
    assert px is not None, "sixel without raster attributes"
    return Image.fromarray(px, "RGB")


def sixel_images(data: bytes) -> list[tuple[dict, Image.Image]]:
    return [({}, decode_sixel(m.group(1))) for m in _SIXEL.finditer(data)]


DECODERS = {"kitty": kitty_images, "iterm2": iterm2_images, "sixel": sixel_images}


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    b = b.convert("RGB").resize(a.size, Image.Resampling.BILINEAR)
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())
