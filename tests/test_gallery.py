"""The HTML gallery: valid, self-contained, escaped; the CLI writes it; Chromium shows it."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from chromium import chromium_or_skip, dump_dom, screenshot
from clip_fixtures import draw_photo
from html_check import MalformedHTML, by_class, parse, text_of, validate
from retllm_lite.cli import cli
from retllm_lite.errors import BadInput
from retllm_lite.pipeline import SearchHit
from retllm_lite.view.display import printable
from retllm_lite.view.gallery import GalleryQuery, render_gallery, write_gallery

HOSTILE_NAMES = [
    "<script>.jpg",
    "<img src=x onerror=document.title=1>.jpg",
    os.fsdecode(b"caf\xe9 & \xff.jpg"),  # not UTF-8
    'quote" tab\tesc\x1b[31m.jpg',
]
HOSTILE_SHOWN = ["<script>.jpg", "<img src=x onerror=document.title=1>.jpg", "caf\\xe9 & \\xff.jpg"]


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


def decode_data_uri(src: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert src.startswith(prefix), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))


def hits_of(root) -> list:
    return [e for e in root.iter("li") if "hit" in (e.get("class") or "").split()]


def assert_self_contained(page: str, root) -> None:
    for tag in ("script", "link", "iframe", "object", "embed", "base"):
        assert not list(root.iter(tag)), f"<{tag}> in the page"
    assert all(img.get("src", "").startswith("data:image/jpeg;base64,") for img in root.iter("img"))
    assert not any(any(k.startswith("on") for k in e.attrib) for e in root.iter())
    assert "http://" not in page and "https://" not in page
    csp = [m for m in root.iter("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0].get("content")


# --- the library, on hits built as data --------------------------------------------------


@pytest.fixture
def images(tmp_path) -> list[Path]:
    out = []
    for i in range(3):
        p = tmp_path / f"photo{i}.jpg"
        draw_photo(40 + i, (640, 480)).save(p, quality=90)
        out.append(p)
    return out


def test_reranked_hits_show_scores_moves_and_modalities(images, tmp_path):
    hits = [
        SearchHit(1, 11, 0.91, "image", path=str(images[0]), clip_score=0.30, coarse_rank=3,
                  p_true=0.91, p_false=0.05, entropy=0.35, enhanced=True),
        SearchHit(2, 12, 0.80, "text", text="a red </blockquote><script>alert(1)</script> kite",
                  item_id="cap-7", clip_score=0.33, coarse_rank=1, p_true=0.80, p_false=0.1,
                  entropy=0.61, enhanced=False),
        SearchHit(3, 13, 0.52, "image+text", path=str(images[1]), text="two dogs\non a beach",
                  item_id="pair-2", clip_score=0.31, coarse_rank=2, p_true=0.52, p_false=0.4,
                  entropy=0.99, enhanced=False),
        SearchHit(4, 14, 0.10, "image", path=str(images[2]), clip_score=0.20, coarse_rank=4,
                  p_true=0.10, p_false=0.85, entropy=0.45, enhanced=True),
    ]  # fmt: skip
    page = render_gallery(hits, GalleryQuery(text="a red kite"), thumb_px=128)
    root = validate(page)
    assert_self_contained(page, root)
    lis = hits_of(root)
    assert [li.get("data-rank") for li in lis] == ["1", "2", "3", "4"]
    assert [li.get("data-coarse-rank") for li in lis] == ["3", "1", "2", "4"]
    moved = [[text_of(s) for s in by_class(li, "span", "moved")] for li in lis]
    assert moved == [["↑ from #3"], ["↓ from #1"], ["↓ from #2"], []]
    assert [text_of(by_class(li, "dd", "p-true")[0]) for li in lis] == ["0.910", "0.800", "0.520", "0.100"]
    assert [text_of(by_class(li, "dd", "clip")[0]) for li in lis] == ["0.300", "0.330", "0.310", "0.200"]
    assert [text_of(by_class(li, "dd", "entropy")[0]) for li in lis] == ["0.350", "0.610", "0.990", "0.450"]
    assert [text_of(by_class(li, "dd", "enhanced")[0]) for li in lis] == ["yes", "no", "no", "yes"]
    # text item: the caption instead of a thumbnail, escaped; image+text: both
    assert not list(lis[1].iter("img"))
    assert text_of(by_class(lis[1], "blockquote", "caption")[0]) == hits[1].text
    assert len(list(lis[2].iter("img"))) == 1
    assert text_of(by_class(lis[2], "blockquote", "caption")[0]) == "two dogs\non a beach"
    assert "reranked by P(True)" in text_of(by_class(root, "p", "meta")[0])
    # thumbnails are downsized JPEGs of the right photos
    for li, path in [(lis[0], images[0]), (lis[3], images[2])]:
        thumb = decode_data_uri(next(li.iter("img")).get("src"))
        assert thumb.format == "JPEG" and max(thumb.size) == 128
        expected = np.asarray(Image.open(path).convert("RGB").resize(thumb.size), dtype=float)
        assert np.abs(np.asarray(thumb.convert("RGB"), dtype=float) - expected).mean() < 12


def test_coarse_only_page_has_no_rerank_fields(images):
    hits = [
        SearchHit(i + 1, i, 0.5 - i / 10, "image", path=str(p), clip_score=0.5 - i / 10, coarse_rank=i + 1)
        for i, p in enumerate(images)
    ]
    root = validate(render_gallery(hits, GalleryQuery(text="x")))
    assert len(hits_of(root)) == 3
    assert not by_class(root, "dd", "p-true") and not by_class(root, "span", "moved")
    assert "CLIP ranking" in text_of(by_class(root, "p", "meta")[0])


def test_exif_rotated_photo_is_shown_upright(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    draw_photo(5, (400, 300)).save(path, quality=90, exif=exif)
    root = validate(render_gallery([SearchHit(1, 1, 0.2, "image", path=str(path))], GalleryQuery(text="q")))
    thumb = decode_data_uri(next(root.iter("img")).get("src"))
    assert thumb.size == (192, 256)


def test_hostile_names_query_and_missing_files_are_shown_not_run(tmp_path):
    hits = []
    for i, name in enumerate(HOSTILE_NAMES):
        path = tmp_path / name
        draw_photo(i, (200, 150)).save(path, "JPEG")
        hits.append(SearchHit(i + 1, i, 0.3, "image", path=str(path)))
    hits.append(SearchHit(len(hits) + 1, 99, 0.1, "image", path=str(tmp_path / "gone.jpg")))
    query = GalleryQuery(text="</title><script>alert(1)</script>", image=tmp_path / HOSTILE_NAMES[0])
    page = render_gallery(hits, query)
    root = validate(page)
    assert_self_contained(page, root)
    names = [text_of(by_class(li, "div", "name")[0]) for li in hits_of(root)]
    assert names[:3] == HOSTILE_SHOWN
    assert names[3] == 'quote" tab\\x09esc\\x1b[31m.jpg'
    assert "\x1b" not in page and "\udcff" not in page
    assert "no such file" in text_of(by_class(hits_of(root)[4], "p", "unreadable")[0])
    assert text_of(next(root.iter("title"))) == "retllm: </title><script>alert(1)</script>"
    assert text_of(by_class(root, "p", "query-text")[0]) == "“</title><script>alert(1)</script>”"
    assert len(list(by_class(root, "figure", "query-image")[0].iter("img"))) == 1
    # the file links point at the real (percent-encoded) files
    hrefs = [a.get("href") for a in root.iter("a")]
    assert Path(tmp_path / HOSTILE_NAMES[2]).as_uri() in hrefs


def test_the_validator_catches_broken_markup(images):
    page = render_gallery([SearchHit(1, 1, 0.5, "image", path=str(images[0]))], GalleryQuery(text="x"))
    validate(page)
    for broken in (
        page.replace("</figure>", "", 1),
        page.replace("</dl>", "</dd>", 1),
        page.replace('<div class="name">photo0.jpg', '<div class="name"><b>photo0.jpg', 1),
        page.replace("<!DOCTYPE html>\n", "", 1),
    ):
        with pytest.raises(MalformedHTML):
            validate(broken)


def test_write_gallery_is_atomic_and_reports_bad_paths(images, tmp_path):
    out = write_gallery(
        tmp_path / "g.html", [SearchHit(1, 1, 0.5, "image", path=str(images[0]))], GalleryQuery("x")
    )
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".g.html")] == []
    with pytest.raises(BadInput, match=r"nowhere.*does not exist"):
        write_gallery(tmp_path / "nowhere" / "g.html", [], GalleryQuery("x"))
    with pytest.raises(BadInput, match="is a folder"):
        write_gallery(tmp_path, [], GalleryQuery("x"))


# --- end to end: retllm index + retllm search --html, then a real browser ----------------


@pytest.fixture
def hostile_index(photos, tiny_clip_dir, tmp_path):
    for i, name in enumerate(HOSTILE_NAMES):
        draw_photo(200 + i).save(photos / name, "JPEG", quality=90)
    index_dir = tmp_path / "idx"
    res = invoke("index", photos, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert res.exit_code == 0, res.output
    return photos, index_dir


N_PHOTOS = 24 + len(HOSTILE_NAMES)


def test_cli_writes_a_valid_gallery_of_all_results(hostile_index, tmp_path):
    photos, index_dir = hostile_index
    query_image = photos / "album0" / "img_0000.jpg"
    out = tmp_path / "out.html"
    res = invoke("search", "a red circle", "--image", query_image, "--index", index_dir, "-k", N_PHOTOS,
                 "--html", out, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"wrote {out} ({N_PHOTOS} results)" in res.stderr
    rows = json.loads(res.stdout)  # --json stays clean next to --html
    page = out.read_text(encoding="utf-8")
    root = validate(page)
    assert_self_contained(page, root)
    lis = hits_of(root)
    assert len(lis) == N_PHOTOS == len(rows)
    assert [int(li.get("data-rank")) for li in lis] == list(range(1, N_PHOTOS + 1))
    names = [text_of(by_class(li, "div", "name")[0]) for li in lis]
    assert names == [printable(os.path.basename(r["path"])) for r in rows]
    assert set(HOSTILE_SHOWN) <= set(names)
    assert len(list(root.iter("img"))) == N_PHOTOS + 1  # every result plus the query image
    for img in by_class(root, "ol", "results")[0].iter("img"):
        assert max(decode_data_uri(img.get("src")).size) <= 256
    bad = invoke("search", "x", "--index", index_dir, "--html", tmp_path / "nowhere" / "g.html")
    assert bad.exit_code == 1 and len(bad.stderr.splitlines()) == 1
    assert f"{tmp_path / 'nowhere' / 'g.html'}: folder {tmp_path / 'nowhere'} does not exist" in bad.stderr


def test_gallery_renders_in_headless_chromium(hostile_index, tmp_path):
    binary = chromium_or_skip()
    _photos, index_dir = hostile_index
    out = tmp_path / "gallery.html"
    res = invoke("search", "a dog", "--index", index_dir, "-k", N_PHOTOS, "--html", out)
    assert res.exit_code == 0, res.output
    url = out.as_uri()

    dom = parse(dump_dom(binary, url))
    lis = hits_of(dom)
    assert len(lis) == N_PHOTOS
    assert [li.get("data-rank") for li in lis] == [str(r) for r in range(1, N_PHOTOS + 1)]
    names = {text_of(by_class(li, "div", "name")[0]) for li in lis}
    assert set(HOSTILE_SHOWN) <= names  # shown as text ...
    assert not list(dom.iter("script"))  # ... never run or parsed as markup
    assert not any("onerror" in e.attrib for e in dom.iter())
    assert text_of(next(dom.iter("title"))) == "retllm: a dog"  # no script changed it
    assert len([i for i in dom.iter("img") if i.get("src", "").startswith("data:image/jpeg")]) == N_PHOTOS

    png = screenshot(binary, url, tmp_path / "shot.png")
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 20, "blank screenshot"
    # the page itself is grey on white; colour comes only from the thumbnails
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 40
    assert colourful.mean() > 0.05, f"thumbnails not visible ({colourful.mean():.3%} colourful pixels)"


def test_open_hands_the_page_to_the_browser(hostile_index, tmp_path):
    _photos, index_dir = hostile_index
    record = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys, pathlib\npathlib.Path({str(record)!r}).write_text(sys.argv[1])\n")
    env = {**os.environ, "BROWSER": f"{sys.executable} {browser} %s"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "retllm_lite",
            "search",
            "a cat",
            "--index",
            str(index_dir),
            "-k",
            "5",
            "--open",
        ],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    opened = record.read_text()
    assert opened.startswith("file://") and opened.endswith("/gallery/last-search.html")
    page = Path(opened[len("file://") :]).read_text(encoding="utf-8")
    assert len(hits_of(validate(page))) == 5
