"""Images with transparency are composited onto white before CLIP, the VLM and thumbnails see them.

The images are drawn here: glyphs carried by the alpha channel alone (RGB black everywhere, as
in clip art), palette PNGs with transparent entries, a colour-keyed RGB PNG, opaque controls.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from clip_fixtures import draw_photo
from retllm_lite.cli import cli
from retllm_lite.encode import load_encoder
from retllm_lite.encode.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, load_image, preprocess
from retllm_lite.index.indexer import Indexer
from retllm_lite.index.store import PIXELS_KEY, Index
from retllm_lite.pil_warnings import recorded
from retllm_lite.pipeline import Retriever
from retllm_lite.rerank.images import load_rgb
from retllm_lite.transparency import PIXELS_VERSION, flatten_transparency
from retllm_lite.view.thumbnails import jpeg_data_uri, make_thumbnail

GLYPHS = "0CLX7"
WHITE_NORMALISED = (1.0 - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(OPENAI_STD, np.float32)


def glyph(ch: str, size: int = 224) -> Image.Image:
    """A black glyph shown by alpha alone: every pixel is RGB (0, 0, 0)."""
    alpha = Image.new("L", (size, size), 0)
    font = ImageFont.load_default(size=200)
    ImageDraw.Draw(alpha).text(
        (size // 2, size // 2), ch, fill=255, font=font, anchor="mm", stroke_width=6, stroke_fill=255
    )
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    img.putalpha(alpha)
    return img


def palette_png(path: Path) -> Path:
    """A 64x64 palette PNG: index 0 fully transparent (left half), 1 half transparent, 2 opaque red.

    Several alpha values make Pillow keep the tRNS chunk as bytes, the case it warns about.
    """
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0, 0, 0, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    ImageDraw.Draw(img).rectangle((32, 0, 63, 31), fill=2)
    ImageDraw.Draw(img).rectangle((32, 32, 63, 63), fill=1)
    img.save(path, transparency=bytes([0, 128, 255]))
    assert isinstance(Image.open(path).info["transparency"], bytes)
    return path


def colour_key_png(path: Path) -> Path:
    """An RGB photo with a black square marked transparent by a tRNS colour key."""
    img = draw_photo(41, (160, 120))
    arr = np.asarray(img).copy()
    arr[arr.sum(axis=2) == 0] = 1  # no stray pure black outside the square
    img = Image.fromarray(arr, "RGB")
    ImageDraw.Draw(img).rectangle((20, 20, 80, 80), fill=(0, 0, 0))
    img.save(path, transparency=(0, 0, 0))
    return path


def glyph_folder(root: Path) -> dict[str, list[Path]]:
    """Transparent images (glyphs, palette, colour key) and opaque ones (JPEGs, RGBA at full alpha)."""
    root.mkdir(parents=True, exist_ok=True)
    transparent = []
    for ch in GLYPHS:
        glyph(ch).save(root / f"glyph-{ch}.png")
        transparent.append(root / f"glyph-{ch}.png")
    transparent.append(palette_png(root / "palette.png"))
    transparent.append(colour_key_png(root / "colour-key.png"))
    opaque = []
    for i in range(3):
        draw_photo(30 + i).save(root / f"photo-{i}.jpg", quality=90)
        opaque.append(root / f"photo-{i}.jpg")
    draw_photo(40).convert("RGBA").save(root / "opaque-rgba.png")
    opaque.append(root / "opaque-rgba.png")
    return {"transparent": transparent, "opaque": opaque}


@pytest.fixture
def fp32(tiny_clip_dir):
    # fp32: no int8 batch effects, so an image searched by itself scores exactly 1
    return load_encoder(tiny_clip_dir, variant="fp32")


def run_index(index_dir, encoder, folder, **kw):
    with Index.open(index_dir, writable=True) as idx:
        return Indexer(idx, encoder, batch_size=kw.pop("batch_size", 4), **kw).index_folders([folder])


# ---- CLIP ---------------------------------------------------------------------------


def test_alpha_only_glyphs_embed_apart_and_find_themselves(fp32, tmp_path):
    files = glyph_folder(tmp_path / "imgs")
    glyphs = files["transparent"][: len(GLYPHS)]
    vecs = fp32.embed_images(glyphs)
    sims = vecs @ vecs.T
    off_diagonal = sims[~np.eye(len(glyphs), dtype=bool)]
    assert off_diagonal.max() < 0.9995, np.round(sims, 5)  # dropping alpha makes them all 1.0

    index_dir = tmp_path / "idx"
    run_index(index_dir, fp32, tmp_path / "imgs")
    with Retriever(Index.open(index_dir), fp32) as r:
        for path in glyphs:
            hits = r.search(image=path, k=3)
            assert hits[0].path == str(path), [(h.path, h.score) for h in hits]
            assert hits[0].score == pytest.approx(1.0, abs=1e-6)
            assert hits[1].score < hits[0].score - 2e-4, [(h.path, h.score) for h in hits]


def test_opaque_rgba_embeds_exactly_like_rgb(fp32, tmp_path):
    photo = draw_photo(12, (500, 300))
    rgba = photo.convert("RGBA")
    assert flatten_transparency(rgba) is rgba  # opaque: today's path, untouched
    photo.save(tmp_path / "rgb.png")
    rgba.save(tmp_path / "rgba.png")
    rgb_vec, rgba_vec = (fp32.embed_images([tmp_path / n])[0] for n in ("rgb.png", "rgba.png"))
    assert rgb_vec.tobytes() == rgba_vec.tobytes()
    for cfg in (PreprocessConfig(), PreprocessConfig(resize_mode="squash", rgb_first=True)):
        assert np.array_equal(preprocess(rgba, cfg), preprocess(photo, cfg))


def test_unused_palette_transparency_keeps_open_clip_parity():
    open_clip = pytest.importorskip("open_clip")
    img = draw_photo(13, (300, 200)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    used = set(np.unique(np.asarray(img)).tolist())
    img.info["transparency"] = next(i for i in range(256) if i not in used)
    cfg = PreprocessConfig()
    ref = open_clip.transform.image_transform(cfg.size, is_train=False, mean=cfg.mean, std=cfg.std)
    assert np.array_equal(preprocess(img, cfg), ref(img).numpy())


def test_palette_png_is_composited_without_a_warning(tmp_path):
    path = palette_png(tmp_path / "palette.png")
    cfg = PreprocessConfig(size=64, resize_mode="squash")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path, cfg.size)
        pixels = preprocess(loaded.image, cfg)
        rgb = load_rgb(path)
        thumb = np.asarray(make_thumbnail(path, 64))
    assert loaded.warnings == []
    assert np.allclose(pixels[:, :, :32], WHITE_NORMALISED[:, None, None], atol=1e-6)  # transparent: white
    red = (np.asarray([1.0, 0.0, 0.0], np.float32) - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(
        OPENAI_STD, np.float32
    )
    assert np.allclose(pixels[:, :32, 32:], red[:, None, None], atol=1e-6)  # opaque red stays red
    bitmap = np.frombuffer(rgb.data, np.uint8).reshape(rgb.height, rgb.width, 3)
    assert (bitmap[:, :32] == 255).all() and (bitmap[:32, 32:] == (255, 0, 0)).all()
    assert np.abs(bitmap[40, 40].astype(int) - (127, 127, 255)).max() <= 1  # half transparent blue
    assert (thumb[:, :32] == 255).all()


def test_colour_key_and_sixteen_bit_grey_key_become_white(tmp_path):
    path = colour_key_png(tmp_path / "key.png")
    cfg = PreprocessConfig(size=160, resize_mode="squash")
    pixels = preprocess(load_image(path, cfg.size).image, cfg)  # 160x120 -> 160x160
    assert np.allclose(pixels[:, 40:90, 25:75], WHITE_NORMALISED[:, None, None], atol=1e-6)

    grey = (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)
    grey[:, :16] = 4000
    Image.fromarray(grey).save(tmp_path / "grey16.png", transparency=4000)
    cfg = PreprocessConfig(size=64, resize_mode="squash")
    pixels = preprocess(load_image(tmp_path / "grey16.png", cfg.size).image, cfg)
    assert np.allclose(pixels[:, :, :14], WHITE_NORMALISED[:, None, None], atol=1e-6)
    assert pixels[:, :, 20:].min() < 0  # the rest: dark grey, as stored


# ---- the reranker's bitmap, thumbnails, previews --------------------------------------


def test_reranker_bitmap_shows_the_glyph_on_white(tmp_path):
    paths = []
    for ch in "0C":
        glyph(ch).save(tmp_path / f"{ch}.png")
        paths.append(tmp_path / f"{ch}.png")
    alpha = np.asarray(Image.open(paths[0]).getchannel("A"))
    zero, c = load_rgb(paths[0]), load_rgb(paths[1])
    bitmap = np.frombuffer(zero.data, np.uint8).reshape(zero.height, zero.width, 3)
    assert (bitmap[alpha == 0] == 255).all()  # background: white
    assert (bitmap[alpha == 255] == 0).all()  # the glyph: black, as drawn
    assert zero.key != c.key  # two glyphs are two images (and two cache entries) for the VLM
    assert load_rgb(glyph("0")).key == zero.key  # in-memory images take the same path


def test_thumbnails_and_previews_show_transparency_as_white(tmp_path):
    img = glyph("C", 128)
    uri = jpeg_data_uri(img)
    page_img = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert page_img[:8, :8].min() > 240  # a corner of the page's thumbnail: white, not black
    pytest.importorskip("chafa")
    from retllm_lite.view.preview import ThumbnailEncoder
    from terminal_images import kitty_images

    drawn = kitty_images(ThumbnailEncoder("kitty", max_cols=8, max_rows=4).encode(img))
    assert drawn, "no image drawn"
    shown = np.asarray(drawn[0][1].convert("RGB"))
    assert shown[:4, :4].min() > 240


# ---- Pillow's warnings ------------------------------------------------------------------


def _bad_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF names a tag with data past its end: Pillow warns, and reads the image."""
    import struct

    entry = struct.pack("<HHII", 0x010E, 2, 400, 5000)
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    draw_photo(21).save(path, "JPEG", quality=90, exif=b"Exif\x00\x00" + tiff)
    return path


def test_recorded_warnings_stay_in_their_thread():
    inside, done = threading.Barrier(3), threading.Barrier(3)
    got: dict[str, list[str]] = {}

    def work(name: str) -> None:
        with recorded() as messages:
            inside.wait()
            for _ in range(2):  # every time, not once per location
                warnings.warn_explicit(f"from {name}", UserWarning, "x.py", 1, module="PIL.Fake")
            done.wait()
        got[name] = messages

    with pytest.warns(UserWarning) as seen:
        threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        inside.wait()  # both threads are inside recorded(): this thread is not
        warnings.warn_explicit("from main", UserWarning, "y.py", 1, module="PIL.Fake")
        done.wait()
        for t in threads:
            t.join()
    assert got == {"a": ["UserWarning: from a"] * 2, "b": ["UserWarning: from b"] * 2}
    assert [str(w.message) for w in seen] == ["from main"]  # shown as usual, not swallowed


def test_index_prints_no_pillow_warning_and_records_it_on_the_item(tiny_clip_dir, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    palette_png(root / "palette.png")
    exif = _bad_exif_jpeg(root / "bad-exif.jpg")
    draw_photo(22).save(root / "plain.jpg", quality=90)
    index_dir = tmp_path / "idx"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    command = [sys.executable, "-m", "retllm_lite", "index", str(root), "--index", str(index_dir)]
    command += ["--clip-model", str(tiny_clip_dir), "--progress", "--workers", "2"]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Palette images" not in proc.stderr, proc.stderr
    assert "1 indexed with a decoder warning" in proc.stderr
    res = CliRunner().invoke(cli, ["index", "--errors", "--index", str(index_dir), "--json"])
    rows = json.loads(res.stdout)
    assert [r["path"] for r in rows] == [str(exif)]
    assert "Tag data larger than file" in rows[0]["reason"] and "\n" not in rows[0]["reason"]
    with Index.open(index_dir) as idx:
        assert idx.catalog.counts()["image:ok"] == 3


# ---- an index made before compositing ---------------------------------------------------


def _make_old(index_dir: Path, encoder, transparent: list[Path]) -> None:
    """What the code before this change left: alpha dropped by convert('RGB'), no pixels key."""
    with Index.open(index_dir, writable=True) as idx, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old convert('RGB') of the palette PNG warns
        cat = idx.catalog
        with cat.transaction() as seq:
            for path in transparent:
                flat = Image.open(path).convert("RGB")
                flat.info.pop("transparency", None)  # an RGB colour key survives convert('RGB')
                old = encoder.embed_pixels(encoder.preprocess(flat)[None])[0]
                cat.replace_vector(cat.by_key(os.fsencode(path)).id, seq, old)
        with cat.transaction(bump=False):
            cat.db.execute("DELETE FROM meta WHERE key=?", (PIXELS_KEY,))


def _state(index_dir: Path) -> dict[str, tuple[int, bytes]]:
    with Index.open(index_dir) as idx:
        rows = idx.catalog.db.execute(
            "SELECT items.path, items.vec_seq, vectors.vec FROM items JOIN vectors ON vectors.id = items.id"
        ).fetchall()
    return {os.fsdecode(p): (seq, vec) for p, seq, vec in rows}


def test_old_index_reembeds_exactly_its_transparent_images(fp32, tmp_path):
    files = glyph_folder(tmp_path / "imgs")
    index_dir = tmp_path / "idx"
    first = run_index(index_dir, fp32, tmp_path / "imgs")
    assert first.indexed == 11 and first.reembedded == 0
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() == PIXELS_VERSION and not idx.pixels_outdated()
    fresh = _state(index_dir)

    _make_old(index_dir, fp32, files["transparent"])
    old = _state(index_dir)
    glyph_vecs = {old[str(p)][1] for p in files["transparent"][: len(GLYPHS)]}
    assert len(glyph_vecs) == 1  # the flaw: every alpha-only glyph was the same blank square
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() is None and idx.pixels_outdated()
    res = CliRunner().invoke(
        cli, ["search", "--image", str(files["transparent"][0]), "--index", str(index_dir), "--json"]
    )
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "retllm index" in line]
    assert len(notes) == 1 and "transparent" in notes[0]

    report = run_index(index_dir, fp32, tmp_path / "imgs")
    assert (report.reembedded, report.indexed, report.unchanged) == (7, 0, 11)
    new = _state(index_dir)
    for path in files["opaque"]:  # not re-embedded: same vector, same change sequence
        assert new[str(path)] == old[str(path)], path.name
    for path in files["transparent"]:
        assert new[str(path)][0] > old[str(path)][0], path.name
        got, want = (np.frombuffer(s[str(path)][1], np.float32) for s in (new, fresh))
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=path.name)
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() == PIXELS_VERSION and not idx.pixels_outdated()
    res = CliRunner().invoke(
        cli, ["search", "--image", str(files["transparent"][0]), "--index", str(index_dir), "--json"]
    )
    assert "retllm index" not in res.stderr
    assert json.loads(res.stdout)[0]["path"] == str(files["transparent"][0])

    again = run_index(index_dir, fp32, tmp_path / "imgs")
    assert again.reembedded == 0 and _state(index_dir) == new


def test_interrupted_refresh_is_redone_and_leaves_a_sound_index(fp32, tmp_path):
    files = glyph_folder(tmp_path / "imgs")
    index_dir = tmp_path / "idx"
    run_index(index_dir, fp32, tmp_path / "imgs")
    _make_old(index_dir, fp32, files["transparent"])
    stages = []

    def interrupt_while_checking(stage, done, total):
        stages.append(stage)
        if stage == "pixels" and done >= 4:
            raise KeyboardInterrupt

    report = run_index(index_dir, fp32, tmp_path / "imgs", batch_size=2, progress=interrupt_while_checking)
    assert report.interrupted and "embed" not in stages
    assert 0 < report.reembedded < 7
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() is None  # not recorded: the next run checks again
        db = idx.catalog.db
        assert db.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0] == 11
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 11

    report = run_index(index_dir, fp32, tmp_path / "imgs")
    assert not report.interrupted and report.reembedded == 7
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() == PIXELS_VERSION
    with Retriever(Index.open(index_dir), fp32) as r:
        for path in files["transparent"][: len(GLYPHS)]:
            assert r.search(image=path, k=1)[0].path == str(path)


def test_files_that_cannot_be_checked_keep_the_index_marked_old(fp32, tmp_path):
    files = glyph_folder(tmp_path / "imgs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    glyph("Q").save(elsewhere / "glyph-Q.png")
    index_dir = tmp_path / "idx"
    run_index(index_dir, fp32, tmp_path / "imgs")
    run_index(index_dir, fp32, elsewhere)
    _make_old(index_dir, fp32, [*files["transparent"], elsewhere / "glyph-Q.png"])
    (elsewhere / "glyph-Q.png").unlink()  # gone, in a folder this run does not index

    report = run_index(index_dir, fp32, tmp_path / "imgs")
    assert (report.reembedded, report.unchecked) == (7, 1)
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() is None and idx.pixels_outdated()

    report = run_index(index_dir, fp32, elsewhere)  # drops the gone file: now all can be checked
    assert report.removed == 1 and report.unchecked == 0
    with Index.open(index_dir) as idx:
        assert idx.pixels_version() == PIXELS_VERSION
