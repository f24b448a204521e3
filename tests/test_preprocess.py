"""Torch-free preprocessing is bit-exact with open_clip's eval transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retllm_lite.encode.preprocess import PreprocessConfig, load_image, preprocess

open_clip = pytest.importorskip("open_clip")

from clip_fixtures import draw_photo  # noqa: E402


def _open_clip_transform(cfg: PreprocessConfig):
    from open_clip.transform import image_transform

    return image_transform(
        cfg.size,
        is_train=False,
        mean=cfg.mean,
        std=cfg.std,
        resize_mode=cfg.resize_mode,
        interpolation=cfg.interpolation,
    )


def _variants():
    base = draw_photo(3, (500, 300))
    yield "rgb-landscape", base
    yield "rgb-portrait", draw_photo(4, (240, 640))
    yield "tiny", draw_photo(5, (60, 40))
    yield "exact-size", draw_photo(6, (224, 224))
    yield "odd-crop", draw_photo(7, (227, 301))
    yield "big", draw_photo(8, (1920, 1080))
    yield "L", base.convert("L")
    yield "LA", base.convert("LA")
    yield "RGBA", base.convert("RGBA")
    yield "P", base.convert("P")
    yield "CMYK", base.convert("CMYK")
    yield "1", base.convert("1")


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_bit_exact_with_open_clip(resize_mode):
    cfg = PreprocessConfig(resize_mode=resize_mode)
    ref = _open_clip_transform(cfg)
    for name, img in _variants():
        expected = ref(img).numpy()
        got = preprocess(img, cfg)
        assert got.dtype == np.float32 and got.shape == (3, 224, 224)
        assert np.array_equal(got, expected), (name, float(np.abs(got - expected).max()))


def test_loaded_jpeg_without_draft_is_bit_exact():
    cfg = PreprocessConfig()
    ref = _open_clip_transform(cfg)
    buf = io.BytesIO()
    draw_photo(9, (1600, 1200)).save(buf, "JPEG", quality=92)
    data = buf.getvalue()
    loaded = load_image(data, cfg.size, draft_factor=None)
    assert np.array_equal(preprocess(loaded.image, cfg), ref(Image.open(io.BytesIO(data))).numpy())


def test_draft_decode_stays_close_and_is_smaller():
    cfg = PreprocessConfig()
    buf = io.BytesIO()
    draw_photo(10, (1920, 1080)).save(buf, "JPEG", quality=92)
    data = buf.getvalue()
    fast = load_image(data, cfg.size, draft_factor=2.0)
    exact = load_image(data, cfg.size, draft_factor=None)
    assert fast.image.size[1] < 1080  # the decoder really scaled down
    assert (fast.width, fast.height) == (exact.width, exact.height) == (1920, 1080)
    a, b = preprocess(fast.image, cfg).ravel(), preprocess(exact.image, cfg).ravel()
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.999


def test_exif_orientation_applied():
    img = draw_photo(11, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    loaded = load_image(buf.getvalue(), 224, draft_factor=None)
    assert loaded.image.size == (200, 300)
    assert (loaded.width, loaded.height) == (200, 300)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    loaded = load_image(buf.getvalue(), 224)
    px = np.asarray(loaded.image)
    assert loaded.image.mode == "L"
    assert px.min() == 0 and px.max() == 255 and 100 < px.mean() < 155
