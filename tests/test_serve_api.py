"""``retllm serve``'s JSON API on a real uvicorn server: the same hits as ``retllm search --json``,
filters, items, thumbnails, uploads, status."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from PIL import Image

from html_check import validate
from retllm_lite.cli import cli
from serve_fixtures import ALBUMS, PER_ALBUM
from torch_free import HEAVY

HIT_FIELDS = (
    "rank",
    "id",
    "score",
    "modality",
    "path",
    "text",
    "item_id",
    "width",
    "height",
    "clip_score",
    "coarse_rank",
    "p_true",
    "p_false",
    "entropy",
    "vocab_entropy",
    "enhanced",
    "date",
    "date_source",
    "camera",
)


def cli_json(index_dir, *args):
    res = CliRunner().invoke(cli, ["search", *map(str, args), "--index", str(index_dir), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def same_hits(api_hits, cli_hits):
    assert len(api_hits) == len(cli_hits) > 0
    for a, c in zip(api_hits, cli_hits, strict=True):
        assert set(HIT_FIELDS) <= set(a) and set(c) == set(HIT_FIELDS)
        for key in HIT_FIELDS:
            if isinstance(c[key], float):
                assert a[key] == pytest.approx(c[key], abs=1e-6), key
            else:
                assert a[key] == c[key], key


def test_search_returns_what_retllm_search_json_returns(served):
    api = served.get_json("/api/search?q=" + quote("a red circle on the beach") + "&k=7")
    same_hits(api["hits"], cli_json(served.index_dir, "a red circle on the beach", "-k", "7"))
    assert api["reranked"] is False and api["index"]["vectors"] == len(ALBUMS) * PER_ALBUM


def test_more_like_this_is_the_image_search_of_that_item(served):
    first = served.get_json("/api/search?q=garden&k=3")["hits"][0]
    api = served.get_json(f"/api/search?like={first['id']}&k=5")
    assert api["hits"][0]["id"] == first["id"]  # an image finds itself first
    same_hits(api["hits"], cli_json(served.index_dir, "--image", first["path"], "-k", "5"))
    composed = served.get_json(f"/api/search?q=flowers&like={first['id']}&image_weight=0.7&k=5")
    same_hits(
        composed["hits"],
        cli_json(served.index_dir, "flowers", "--image", first["path"], "--image-weight", "0.7", "-k", "5"),
    )


def test_uploaded_image_query_matches_the_cli(served):
    path = served.photos / "city" / "p1.jpg"
    _status, api = served.post_image("/api/search", {"k": "4"}, path.read_bytes())
    assert api["query"]["image"] == "upload"
    same_hits(api["hits"], cli_json(served.index_dir, "--image", path, "-k", "4"))
    _status, both = served.post_image(
        "/api/search", {"k": "4", "q": "a city", "image_weight": "0.3"}, path.read_bytes()
    )
    same_hits(
        both["hits"],
        cli_json(served.index_dir, "a city", "--image", path, "--image-weight", "0.3", "-k", "4"),
    )


def test_folder_filter_matches_the_cli_include_glob(served):
    folder = str(served.photos / "beach")
    api = served.get_json("/api/search?q=sea&k=50&folder=" + quote(folder))
    assert len(api["hits"]) == PER_ALBUM
    same_hits(api["hits"], cli_json(served.index_dir, "sea", "-k", "50", "--include", f"{folder}/*"))
    folders = served.get_json("/api/folders")["folders"]
    assert folders == sorted(str(served.photos / a) for a in ALBUMS)
    served.get_json("/api/search?q=sea&folder=relative/path", expect=400)


def test_date_filter_keeps_the_range(served):
    api = served.get_json("/api/search?q=sea&k=50&after=2021&before=2022")
    assert len(api["hits"]) == PER_ALBUM
    assert all(h["date"].startswith("2021-") and h["date_source"] == "mtime" for h in api["hits"])
    assert all("/city/" in h["path"] for h in api["hits"])
    june = served.get_json("/api/search?q=sea&k=50&after=2023-06-02&before=2023-06-04")["hits"]
    assert sorted(h["date"][:10] for h in june) == ["2023-06-02", "2023-06-03"]
    both = served.get_json("/api/search?q=sea&k=50&after=2019&folder=" + quote(str(served.photos / "beach")))
    assert len(both["hits"]) == PER_ALBUM
    assert served.get_json("/api/search?q=sea&after=2030")["hits"] == []
    for bad in (
        "after=June",
        "after=2023-13",
        "after=2023&before=2022",
        "k=0",
        "k=abc",
        "rerank_k=99",
        "image_weight=2",
        "enhance=maybe",
        "like=-1",
        "like=abc",
    ):
        err = served.get_json(f"/api/search?q=sea&{bad}", expect=400)
        assert err["error"], bad


def test_item_view_has_path_dates_and_exif(served):
    hits = served.get_json("/api/search?q=x&k=50&folder=" + quote(str(served.photos / "garden")))["hits"]
    hit = next(h for h in hits if h["path"].endswith("garden/p0.jpg"))
    item = served.get_json(f"/api/items/{hit['id']}")
    assert item["path"] == hit["path"] and item["name"] == "p0.jpg"
    assert item["folder"] == str(served.photos / "garden") and (item["width"], item["height"]) == (480, 360)
    # from the catalog (recorded at indexing), not read from the file again
    assert item["exif"] == {
        "datetime_original": "2023-06-14T09:30:00",
        "camera": "TestMake Model <b>&amp;</b>",
    }
    assert item["date"] == "2023-06-14T09:30:00" and item["date_source"] == "exif"
    assert item["camera"] == "TestMake Model <b>&amp;</b>"
    assert hit["date"] == item["date"] and hit["date_source"] == "exif" and hit["camera"] == item["camera"]
    # another photo of that album has no EXIF: its file date, marked as such
    other = next(h for h in hits if h["path"].endswith("garden/p1.jpg"))
    assert (
        other["date"] == "2023-06-02T12:00:00" and other["date_source"] == "mtime" and other["camera"] is None
    )
    served.get_json("/api/items/999999", expect=404)


def test_thumbnails_are_cached_on_disk_and_by_the_browser(served):
    hit = served.get_json("/api/search?q=x&k=1")["hits"][0]
    status, headers, body = served.request("GET", hit["thumbnail"])
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert "max-age" in headers["cache-control"] and headers["etag"]
    img = Image.open(io.BytesIO(body))
    assert img.format == "JPEG" and max(img.size) == 256
    cached = list(served.served.settings.thumbnails.directory.rglob("*.jpg"))
    assert cached and any(p.read_bytes() == body for p in cached)
    status, _h, body304 = served.request("GET", hit["thumbnail"], headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body304 == b""
    status, _h, big = served.request("GET", f"/api/items/{hit['id']}/thumbnail?size=1024")
    assert status == 200 and max(Image.open(io.BytesIO(big)).size) == 480  # never upscaled
    assert served.request("GET", f"/api/items/{hit['id']}/thumbnail?size=5000")[0] == 400


def test_status_names_counts_errors_and_models(served):
    s = served.get_json("/api/status")
    assert s["items"] == {
        "total": len(ALBUMS) * PER_ALBUM,
        "image": len(ALBUMS) * PER_ALBUM,
        "text": 0,
        "image+text": 0,
    }
    assert s["errors"]["count"] == 1 and s["errors"]["first"][0]["path"].endswith("broken.jpg")
    assert s["models"]["clip"]["name"] and s["models"]["clip"]["dim"] > 0
    assert s["models"]["vlm"]["available"] is False and "--vlm-model" in s["models"]["vlm"]["reason"]
    assert served.get_json("/api/search?q=x&rerank=1", expect=400)["error"].startswith("reranking is off")


def test_uploads_are_capped_and_bomb_guarded(served, tmp_path):
    cap = served.served.settings.max_upload_bytes
    _status, err = served.post_image("/api/search", {"k": "3"}, b"\xff" * (cap + 1), expect=413)
    assert "limit" in err["error"]
    bomb = io.BytesIO()
    Image.new("1", (20000, 10000)).save(bomb, "PNG")  # 200 M pixels declared, a tiny file
    _status, err = served.post_image("/api/search", {"k": "3"}, bomb.getvalue(), expect=400)
    assert "too large to decode safely" in err["error"]
    _status, err = served.post_image("/api/search", {"k": "3"}, b"just text", expect=400)
    assert "not an image" in err["error"]
    # nothing was written next to the photos
    names = sorted(p.name for p in served.photos.rglob("*"))
    assert names == sorted(
        ["beach", "city", "garden", "broken.jpg"] + [f"p{i}.jpg" for i in range(PER_ALBUM)] * len(ALBUMS)
    )


def test_the_page_and_its_assets(served):
    status, headers, page = served.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    text = page.decode()
    assert "http://" not in text and "https://" not in text
    root = validate(text)  # html5lib: the page is valid HTML
    scripts = list(root.iter("script"))
    assert scripts and all(
        s.get("src", "").startswith("/static/") and not (s.text or "").strip() for s in scripts
    )
    assert not any(any(k.startswith("on") for k in e.attrib) for e in root.iter())
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        status, headers, body = served.request("GET", f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(ctype)
        assert b"http://" not in body and b"https://" not in body
    status, _h, js = served.request("GET", "/static/app.js")
    assert b"innerHTML" not in js and b"eval(" not in js and b"insertAdjacentHTML" not in js


def test_serving_never_imports_torch(serve_corpus):
    """The web app is on the search path: no torch, torchvision, open_clip or transformers."""
    _photos, index_dir = serve_corpus
    code = f"""
import asyncio, sys
from retllm_lite.serve import SearchRequest, ServedIndex, ServeSettings, bind_policy, create_app
from retllm_lite.serve.files import ThumbnailCache
import tempfile
served = ServedIndex(ServeSettings(index_path={str(index_dir)!r}, thumbnails=ThumbnailCache(
    __import__("pathlib").Path(tempfile.mkdtemp()))))
create_app(served, bind_policy("127.0.0.1", None))
async def main():
    hits = (await served.search(SearchRequest(text="a dog", k=3)))["hits"]
    await served.item(hits[0]["id"])
    await served.thumbnail(hits[0]["id"], 256)
    await served.search(SearchRequest(like=hits[0]["id"], k=3, after="2019", folder="/"))
    await served.status()
asyncio.run(main())
served.close()
bad = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
