"""Phone and camera formats: HEIC, AVIF and RAW (DNG with and without a preview), made here.

Each file is indexed through the real decoders (pillow-heif, Pillow's AVIF, LibRaw via
rawpy) and found first by a search for the picture it holds (the picture saved as a PNG
that is not in the index), upright where its orientation says so. Corrupt ones are
recorded with a one-line reason; sidecars and Live Photo videos are skipped with a
reason; without the photos extra, HEIC and RAW files are skipped with what to install.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clip_fixtures import draw_photo, make_photo_folder
from raw_fixtures import write_dng
from retllm_lite.cli import cli
from retllm_lite.index.store import Index

pytest.importorskip("pillow_heif")
pytest.importorskip("rawpy")

UPRIGHT = (240, 320)  # width, height of the portrait pictures below


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _exif(orientation: int = 1, taken: str | None = None, make="Apple", model="iPhone 15 Pro") -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = make
    ex[0x0110] = model
    if taken:
        ex.get_ifd(0x8769)[0x9003] = taken
    return ex.tobytes()


def _sensor(upright: Image.Image) -> Image.Image:
    """What a camera held sideways stores: the picture turned 90° left (EXIF orientation 6 undoes it)."""
    return upright.transpose(Image.Transpose.ROTATE_90)


def write_phone_formats(root, queries) -> dict[str, tuple[int, int]]:
    """HEIC, AVIF and two DNGs, each a portrait picture stored sideways with orientation 6.

    The upright pictures are written to ``queries`` as PNG; returns {name: (width, height)}
    as each must be displayed.
    """
    import pillow_heif

    pillow_heif.register_heif_opener()
    expect = {}
    for seed, name in (
        (101, "IMG_0101.HEIC"),
        (102, "IMG_0102.avif"),
        (103, "DSC_0103.dng"),
        (104, "RAW_0104.DNG"),
    ):
        upright = draw_photo(seed, UPRIGHT)
        upright.save(queries / f"{seed}.png")
        sensor = _sensor(upright)
        path = root / name
        if name.endswith(".HEIC"):
            sensor.save(path, "HEIF", exif=_exif(6, "2023:07:14 10:22:01"), quality=90)
        elif name.endswith(".avif"):
            sensor.save(path, "AVIF", exif=_exif(6, "2023:08:01 09:00:00"), quality=90)
        else:
            write_dng(path, np.asarray(sensor), preview=name.startswith("DSC"), orientation=6)
        expect[name] = UPRIGHT
    return expect


@pytest.fixture
def phone_folder(tmp_path):
    root = tmp_path / "phone"
    make_photo_folder(root, 8, start_seed=200, size=UPRIGHT)  # distractors, also portrait
    queries = tmp_path / "queries"
    queries.mkdir()
    return root, queries, write_phone_formats(root, queries)


def test_heic_avif_raw_indexed_upright_and_found_first(phone_folder, tiny_clip_dir, tmp_path):
    root, queries, expect = phone_folder
    index_dir = tmp_path / "idx"
    res = run_cli("index", root, "--index", index_dir, "--clip-model", tiny_clip_dir, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["indexed"] == 8 + 4 and report["failed"] == 0, report
    with Index.open(index_dir) as idx:
        rows = {os.path.basename(os.fsdecode(r.path)): r for r in idx.catalog.all_items()}
    for name, (w, h) in expect.items():
        row = rows[name]
        assert row.status == "ok" and row.error is None, (name, row.error)
        assert (row.width, row.height) == (w, h), name  # orientation applied: upright
    for seed, name in zip((101, 102, 103, 104), expect, strict=True):
        out = run_cli("search", "--image", queries / f"{seed}.png", "--index", index_dir, "-k", "3", "--json")
        assert out.exit_code == 0, out.output
        hits = json.loads(out.stdout)
        assert os.path.basename(hits[0]["path"]) == name, (name, [(h["path"], h["score"]) for h in hits])
        # and the file itself as the query: decoded the same way, it is its own nearest
        out = run_cli("search", "--image", root / name, "--index", index_dir, "-k", "1", "--json")
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)[0]["score"] > 0.999


def test_raw_preview_and_demosaic_paths(tmp_path):
    """The DNG with a preview is shown from its JPEG, the other one demosaiced; both upright."""
    from retllm_lite.encode.preprocess import load_image

    upright = draw_photo(7, (64, 96))
    sensor = np.asarray(_sensor(upright))
    # a preview that differs from the mosaic tells which one was decoded
    marker = np.zeros_like(sensor)
    marker[...] = (0, 255, 0)
    with_preview = write_dng(tmp_path / "a.dng", sensor, preview=True, orientation=6, preview_rgb=marker)
    without = write_dng(tmp_path / "b.dng", sensor, preview=False, orientation=6)
    a = load_image(with_preview, name="a.dng")
    b = load_image(without, name="b.dng")
    assert (a.info["raw"], b.info["raw"]) == ("preview", "demosaic")
    assert a.image.size == b.image.size == (a.width, a.height) == (64, 96)
    assert np.abs(np.asarray(a.image, np.int16) - (0, 255, 0)).max() < 16
    # the demosaic is the picture: the mean colour of each half matches the upright original
    got, want = np.asarray(b.image, np.float64), np.asarray(upright, np.float64)
    corr = np.corrcoef(got.mean(axis=2).ravel(), want.mean(axis=2).ravel())[0, 1]
    assert corr > 0.8, corr


def _heic_bytes(seed: int) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    draw_photo(seed, (64, 48)).save(buf, "HEIF")
    return buf.getvalue()


def test_corrupt_heic_and_raw_are_recorded_not_fatal(tmp_path, tiny_clip_dir):
    root = tmp_path / "bad"
    root.mkdir()
    heic = _heic_bytes(1)
    dng = write_dng(tmp_path / "good.dng", np.asarray(draw_photo(2, (300, 200))), preview=False)
    (root / "truncated.heic").write_bytes(heic[: len(heic) // 2])
    (root / "text.heic").write_bytes(b"not a heic at all\n" * 30)
    (root / "text.nef").write_bytes(b"II*\x00" + b"\x00" * 400)
    (root / "truncated.dng").write_bytes(dng[:200])
    (root / "huge.dng").write_bytes(dng)
    (root / "ok.heic").write_bytes(heic)
    index_dir = tmp_path / "idx"
    # huge.dng's 60,000 px sensor is over this limit: a 'bomb'; ok.heic's 3,072 px (and the
    # 224 x 224 model input made from it) are not
    env_limit = "import PIL.Image as I; I.MAX_IMAGE_PIXELS = 55000"
    code = (
        f"{env_limit}; import sys; from retllm_lite.cli import main; "
        f"sys.argv = ['retllm', 'index', {str(root)!r}, '--index', {str(index_dir)!r}, "
        f"'--clip-model', {str(tiny_clip_dir)!r}]; main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = run_cli("index", "--errors", "--index", index_dir, "--json")
    reasons = {os.path.basename(e["path"]): e["reason"] for e in json.loads(out.stdout)}
    assert set(reasons) == {"truncated.heic", "text.heic", "text.nef", "truncated.dng", "huge.dng"}, reasons
    assert all("\n" not in r and r for r in reasons.values()), reasons
    assert "camera RAW" in reasons["text.nef"] and "camera RAW" in reasons["truncated.dng"]
    assert "too large" in reasons["huge.dng"]
    with Index.open(index_dir) as idx:
        ok = [os.path.basename(os.fsdecode(r.path)) for r in idx.catalog.all_items("ok")]
    assert ok == ["ok.heic"]
    # the table form names each file on one line
    table = run_cli("index", "--errors", "--index", index_dir)
    assert all(name in table.stdout for name in reasons)


def test_sidecars_and_live_photo_videos_are_skipped_with_a_reason(tmp_path, tiny_clip_dir):
    root = tmp_path / "iphone"
    root.mkdir()
    (root / "IMG_0001.HEIC").write_bytes(_heic_bytes(3))
    (root / "IMG_0001.MOV").write_bytes(b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 100)
    (root / "IMG_0001.AAE").write_text("<plist/>")
    (root / "IMG_0002.jpg").write_bytes(b"")  # an empty still: an error, not a skip
    draw_photo(4, (64, 48)).save(root / "IMG_0003.JPG")
    (root / "IMG_0003.xmp").write_text("<x:xmpmeta/>")
    (root / "IMG_0003.mp4").write_bytes(b"\x00" * 64)
    (root / "holiday.mov").write_bytes(b"\x00" * 64)  # a video on its own: not a photo, not reported
    index_dir = tmp_path / "idx"
    res = run_cli("index", root, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert res.exit_code == 0, res.output
    assert "not indexed" in res.stderr and "Live Photo video" in res.stderr
    errors = json.loads(run_cli("index", "--errors", "--index", index_dir, "--json").stdout)
    reasons = {os.path.basename(e["path"]): e["reason"] for e in errors}
    assert reasons.keys() == {"IMG_0001.MOV", "IMG_0001.AAE", "IMG_0003.xmp", "IMG_0003.mp4", "IMG_0002.jpg"}
    assert "Live Photo video" in reasons["IMG_0001.MOV"] and "Live Photo video" in reasons["IMG_0003.mp4"]
    assert "sidecar" in reasons["IMG_0001.AAE"] and "sidecar" in reasons["IMG_0003.xmp"]
    info = json.loads(run_cli("info", "--index", index_dir, "--json").stdout)
    assert info["items"]["skipped"] == 4
    assert info["items"]["vectors"] == 2


def test_without_the_photos_extra_heic_and_raw_say_what_to_install(tmp_path, tiny_clip_dir):
    """pillow-heif and rawpy made unimportable in a fresh interpreter: skipped, with the install line."""
    root = tmp_path / "phone"
    root.mkdir()
    (root / "a.heic").write_bytes(_heic_bytes(5))
    write_dng(root / "b.dng", np.asarray(draw_photo(6, (64, 48))), preview=True)
    draw_photo(7, (64, 48)).save(root / "c.jpg")
    index_dir = tmp_path / "idx"
    code = (
        "import sys; sys.modules['pillow_heif'] = None; sys.modules['rawpy'] = None; "
        "from retllm_lite.cli import main; "
        f"sys.argv = ['retllm', 'index', {str(root)!r}, '--index', {str(index_dir)!r}, "
        f"'--clip-model', {str(tiny_clip_dir)!r}]; main()"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("1 indexed"), res.stderr
    errors = json.loads(run_cli("index", "--errors", "--index", index_dir, "--json").stdout)
    reasons = {os.path.basename(e["path"]): e["reason"] for e in errors}
    assert set(reasons) == {"a.heic", "b.dng"}
    assert all("pip install 'retllm-lite[photos]'" in r for r in reasons.values()), reasons
    assert "pillow-heif" in reasons["a.heic"] and "rawpy" in reasons["b.dng"]
    # with the extra back (this interpreter), the next run indexes them
    res2 = run_cli("index", root, "--index", index_dir, "--json")
    assert res2.exit_code == 0, res2.output
    assert json.loads(res2.stdout)["indexed"] == 2
