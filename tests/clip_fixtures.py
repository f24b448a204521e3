"""Session fixtures: a tiny random-weight open_clip model exported by ``retllm quantize clip``'s
own code, and folders of small generated photos. Built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

TINY_CLIP_CONFIG = Path(__file__).parent / "data" / "tiny-clip.json"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny open_clip (random init) exported to ONNX fp32 + int8 with a manifest."""
    from retllm_lite.quantize.clip import export_open_clip

    out = tmp_path_factory.mktemp("models") / "tiny-clip"
    export_open_clip(str(TINY_CLIP_CONFIG), out, random_init=True, seed=0, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_clip_torch():
    """The same tiny model in torch (same seed), for parity checks."""
    from retllm_lite.quantize.clip import create_open_clip

    model, _name, _src = create_open_clip(str(TINY_CLIP_CONFIG), None, True, seed=0)
    return model


def draw_photo(seed: int, size=(320, 240)) -> Image.Image:
    """A distinct synthetic 'photo': a colour gradient with random shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(-120, 120, 3)
    arr = np.clip(base + grad + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x1, y1), fill=color)
        else:
            d.rectangle((x0, y0, x1, y1), fill=color)
    return img


def make_photo_folder(
    root: Path, n: int, start_seed: int = 0, fmt: str = "jpg", size=(320, 240)
) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        sub = root / f"album{i % 3}"
        sub.mkdir(exist_ok=True)
        p = sub / f"img_{start_seed + i:04d}.{fmt}"
        photo = draw_photo(start_seed + i, size)
        photo.save(p, quality=90) if fmt == "jpg" else photo.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def photo_source(tmp_path_factory) -> Path:
    """A folder of 24 generated photos (copy it before changing it)."""
    root = tmp_path_factory.mktemp("photo-source")
    make_photo_folder(root, 24)
    return root


@pytest.fixture
def photos(photo_source, tmp_path) -> Path:
    """A private, writable copy of the photo folder."""
    dest = tmp_path / "photos"
    shutil.copytree(photo_source, dest)
    return dest
