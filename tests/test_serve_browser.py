"""``retllm serve`` in a real headless Chromium (DevTools protocol): type a query, see the grid,
open the larger view, click "more like this", toggle rerank with the tiny VLM, apply a date
filter, take the screenshot README shows (RETLLM_SERVE_SCREENSHOT=docs/serve.png saves it there)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cdp import Browser
from chromium import chromium_or_skip
from clip_fixtures import draw_photo
from serve_fixtures import PER_ALBUM, index_folder, make_corpus, start

HOSTILE = "<img src=x onerror=document.title='pwned'>.jpg"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_clip_dir, tiny_vlm_f16):
    from retllm_lite.rerank.scorer import Scorer

    root = tmp_path_factory.mktemp("serve-browser")
    photos = make_corpus(root)
    hostile = photos / "city" / HOSTILE
    draw_photo(7, (480, 360)).save(hostile, quality=90)
    t = dt.datetime(2021, 7, 1, 12).timestamp()
    os.utime(hostile, (t, t))
    index_folder(photos, root / "idx", tiny_clip_dir)

    def factory():
        return Scorer.from_manifest(tiny_vlm_f16.directory, n_threads=1, embedding_cache=True)

    with start(photos, root / "idx", scorer_factory=factory, vlm_name="tiny-gemma3 (test)") as s:
        yield f"http://127.0.0.1:{s.port}/", s


def count(b: Browser, selector: str) -> int:
    return b.js(f"document.querySelectorAll({selector!r}).length")


def wait_results(b: Browser, previous: str | None = None):
    """Wait until a search finished and rendered (its summary differs from ``previous``)."""
    b.wait_for(
        "!document.body.dataset.searching && document.getElementById('summary').textContent !== "
        + repr(previous or "")
    )
    assert b.js("getComputedStyle(document.getElementById('progress')).display") == "none"
    return b.js("document.getElementById('summary').textContent")


def test_the_web_app_in_chromium(app_url, tmp_path):
    url, served = app_url
    b = Browser(chromium_or_skip())
    try:
        b.goto(url)
        b.wait_for("document.getElementById('status').dataset.ready === '1'")
        status = b.js("document.getElementById('status').textContent")
        assert f"{3 * PER_ALBUM + 1} items" in status and "1 could not be indexed" in status

        # type a query, see the grid (thumbnails loaded, escaped names shown as text)
        b.type("#q", "a red circle")
        b.press_enter()
        summary = wait_results(b)
        assert summary.startswith("13 results for “a red circle”")
        assert count(b, "#results li.hit") == 13
        b.wait_for(
            "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        names = b.js("[...document.querySelectorAll('#results .name')].map(e => e.textContent)")
        assert HOSTILE in names and count(b, "#results img[src='x']") == 0
        assert b.js("document.title") == "retllm"

        # the larger view: path and dates
        b.click("#results li.hit:nth-child(1) .thumb")
        b.wait_for(
            "document.getElementById('detail').open && document.getElementById('detail-image').complete"
            " && document.getElementById('detail-image').naturalWidth > 0"
        )
        meta = b.js("document.getElementById('detail-meta').textContent")
        first_path = b.js("document.querySelector('#results li.hit .thumb').title")
        assert first_path in meta and "file date" in meta
        b.click("#detail-close")
        b.wait_for("!document.getElementById('detail').open")

        # "more like this" on the third result: an image search that finds it first
        third = b.js("document.querySelector('#results li.hit:nth-child(3)').dataset.id")
        b.click("#results li.hit:nth-child(3) .more")
        summary = wait_results(b, summary)
        assert "like " in summary and "CLIP ranking" in summary
        assert b.js("document.querySelector('#results li.hit').dataset.id") == third

        # an image query from a file (as dropped or chosen): uploaded, found first, never stored
        upload = served.photos / "garden" / "p2.jpg"
        doc = b.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = b.call("DOM.querySelector", {"nodeId": doc, "selector": "#file"}, session=True)["nodeId"]
        b.call("DOM.setFileInputFiles", {"files": [str(upload)], "nodeId": node}, session=True)
        b.wait_for("!document.getElementById('query-image').hidden")
        b.click("#go")
        summary = wait_results(b, summary)
        assert "the dropped image" in summary
        assert b.js("document.querySelector('#results li.hit .thumb').title") == str(upload)

        # rerank with the tiny VLM: progress shown meanwhile, P(True)/entropy/enhanced on the top 5
        b.click("#clear-image")
        b.click("#rerank")
        assert b.js("document.getElementById('rerank').checked") is True
        b.type("#q", "a red circle")
        b.press_enter()
        b.wait_for(
            "getComputedStyle(document.getElementById('progress')).display !== 'none'"
            " || document.getElementById('results').dataset.reranked === '1'"
        )
        summary = wait_results(b, summary)
        assert "reranked by P(True)" in summary
        assert b.js("document.body.dataset.rerankProgressShown") == "1"
        assert b.js("document.getElementById('results').dataset.reranked") == "1"
        assert count(b, "#results .p-true") == 5 and count(b, "#results .enhanced") == 5
        moved = b.js(
            "[...document.querySelectorAll('#results li.hit')].slice(0, 5)"
            ".map(e => [Number(e.dataset.rank), Number(e.dataset.coarseRank)])"
        )
        assert sorted(c for _r, c in moved) == [1, 2, 3, 4, 5]
        badges = count(b, "#results .moved")
        assert badges == sum(1 for r, c in moved if r != c)

        # a date filter: 2021 only, then from 2021 on
        b.type("#after", "2021")
        b.type("#before", "2022")
        b.press_enter()
        summary = wait_results(b, summary)
        dates = b.js("[...document.querySelectorAll('#results li.hit')].map(e => e.dataset.date)")
        assert len(dates) == PER_ALBUM + 1 and all(d.startswith("2021-") for d in dates)
        assert "after 2021, before 2022" in summary
        b.type("#before", "")
        b.js("document.getElementById('before').value = ''")
        b.press_enter()
        summary = wait_results(b, summary)
        dates = b.js("[...document.querySelectorAll('#results li.hit')].map(e => e.dataset.date)")
        assert len(dates) == 2 * PER_ALBUM + 1 and all(d >= "2021" for d in dates)
        b.wait_for(
            "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        b.js("window.scrollTo(0, 0)")

        shot = b.screenshot(tmp_path / "serve.png")
        with Image.open(shot) as img:
            assert img.size == (1280, 900)
            assert len(img.convert("RGB").getcolors(1 << 20) or []) > 500  # photos, not a blank page
        exceptions = [e for e in b.events if e.get("method") == "Runtime.exceptionThrown"]
        assert not exceptions, exceptions[:3]
        assert b.js("document.title") == "retllm"
        out = os.environ.get("RETLLM_SERVE_SCREENSHOT")
        if out:
            shutil.copyfile(shot, Path(out))
    finally:
        b.close()
