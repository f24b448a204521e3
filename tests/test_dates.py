"""Capture dates: EXIF DateTimeOriginal written here, mtime fallback marked as such, camera,
``retllm search --after/--before`` (YYYY, YYYY-MM, YYYY-MM-DD), --json fields, and the
schema 1 -> 2 catalog migration (old rows dated by the next run, nothing re-embedded)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3

import pytest
from click.testing import CliRunner
from PIL import Image

from clip_fixtures import draw_photo
from retllm_lite.cli import cli
from retllm_lite.index.catalog import SCHEMA_VERSION
from retllm_lite.index.store import Index


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _save(path, seed, taken=None, make=None, model=None, mtime=None):
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    draw_photo(seed, (96, 72)).save(path, quality=90, exif=exif)
    if mtime is not None:
        t = dt.datetime(*mtime).timestamp()
        os.utime(path, (t, t))


# name -> (EXIF DateTimeOriginal or None, the date search must see, its source)
PHOTOS = {
    "june.jpg": ("2023:06:14 09:30:00", "2023-06-14T09:30:00", "exif"),
    "july1.jpg": ("2023:07:01 23:59:59", "2023-07-01T23:59:59", "exif"),
    "sept.jpg": ("2023:09:01 00:00:00", "2023-09-01T00:00:00", "exif"),
    "old.jpg": ("2022:12:31 18:00:00", "2022-12-31T18:00:00", "exif"),
    "august-no-exif.jpg": (None, "2023-08-10T12:00:00", "mtime"),
    "zeros.jpg": ("0000:00:00 00:00:00", "2023-05-20T08:00:00", "mtime"),  # a clock never set
}


@pytest.fixture
def dated(tmp_path, tiny_clip_dir):
    root = tmp_path / "dated"
    root.mkdir()
    for seed, (name, (taken, _, _)) in enumerate(PHOTOS.items()):
        # every file's mtime is in 2024, except where the mtime is the date
        mtime = (2024, 1, 2, 3, 4, 5)
        if name == "august-no-exif.jpg":
            mtime = (2023, 8, 10, 12, 0, 0)
        elif name == "zeros.jpg":
            mtime = (2023, 5, 20, 8, 0, 0)
        _save(root / name, seed, taken, "Canon", "Canon EOS R5" if taken else None, mtime)
    index_dir = tmp_path / "idx"
    res = run_cli("index", root, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert res.exit_code == 0, res.output
    return root, index_dir


def _search(index_dir, *opts):
    res = run_cli("search", "anything", "--index", index_dir, "-k", "50", "--json", *opts)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_json_carries_capture_date_source_and_camera(dated):
    _root, index_dir = dated
    hits = {os.path.basename(h["path"]): h for h in _search(index_dir)}
    assert hits.keys() == PHOTOS.keys()
    for name, (_taken, want, source) in PHOTOS.items():
        assert (hits[name]["date"], hits[name]["date_source"]) == (want, source), name
    assert hits["june.jpg"]["camera"] == "Canon EOS R5"  # the make is not repeated
    assert hits["august-no-exif.jpg"]["camera"] == "Canon"


@pytest.mark.parametrize(
    ("after", "before", "names"),
    [
        ("2023-06", "2023-09", {"june.jpg", "july1.jpg", "august-no-exif.jpg"}),
        ("2023", None, {"june.jpg", "july1.jpg", "sept.jpg", "august-no-exif.jpg", "zeros.jpg"}),
        (None, "2023", {"old.jpg"}),
        ("2023-07-01", "2023-07-02", {"july1.jpg"}),  # one day, to its last second
        ("2023-09-01", None, {"sept.jpg"}),  # from its first second
        ("2023-6", "2023-7", {"june.jpg"}),
        ("2030", None, set()),
    ],
)
def test_after_before_bounds(dated, after, before, names):
    _root, index_dir = dated
    opts = [*(["--after", after] if after else []), *(["--before", before] if before else [])]
    assert {os.path.basename(h["path"]) for h in _search(index_dir, *opts)} == names


@pytest.mark.parametrize(
    ("opts", "says"),
    [
        (["--after", "2023-13"], "'--after': '2023-13' is not a date: use YYYY, YYYY-MM or YYYY-MM-DD"),
        (["--before", "June"], "'--before': 'June' is not a date"),
        (["--after", "2023-02-30"], "'--after': '2023-02-30' is not a date"),
        (["--after", "2023-09", "--before", "2023-06"], "after=2023-09 is not before before=2023-06"),
    ],
)
def test_bad_dates_are_one_line_usage_errors(dated, opts, says):
    _root, index_dir = dated
    res = run_cli("search", "x", "--index", index_dir, *opts)
    assert res.exit_code == 2
    err = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and says in err[0], res.stderr


def test_dates_on_a_lance_index_are_a_clear_error(tmp_path):
    res = run_cli("search", "x", "--index", f"lance:{tmp_path / 'l'}", "--after", "2023")
    assert res.exit_code == 2
    assert "LanceDB indexes do not record capture dates" in res.stderr


def _downgrade_to_schema_1(index_dir):
    """What an index made before capture dates looks like: schema 1, no capture columns."""
    db = sqlite3.connect(index_dir / "catalog.sqlite3")
    for col in ("taken", "taken_source", "camera"):
        db.execute(f"ALTER TABLE items DROP COLUMN {col}")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()


def test_schema_1_catalog_is_read_then_migrated_and_dated_without_reembedding(dated, tiny_clip_dir):
    root, index_dir = dated
    before = {os.path.basename(h["path"]): h["score"] for h in _search(index_dir)}
    _downgrade_to_schema_1(index_dir)

    # a search before any index run: read-only, the catalog is left at schema 1, dates are mtimes
    old = {os.path.basename(h["path"]): h for h in _search(index_dir)}
    assert {n: h["score"] for n, h in old.items()} == before
    assert all(h["date_source"] == "mtime" and h["camera"] is None for h in old.values())
    assert old["june.jpg"]["date"].startswith("2024-01-02")
    assert _search(index_dir, "--after", "2024") and not _search(
        index_dir, "--after", "2023-06", "--before", "2023-07"
    )
    db = sqlite3.connect(index_dir / "catalog.sqlite3")
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
    db.close()

    # the next index run migrates (schema 2), reads each photo's EXIF once, re-embeds nothing
    res = run_cli("index", root, "--index", index_dir, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["indexed"] == 0 and report["unchanged"] == len(PHOTOS), report
    with Index.open(index_dir) as idx:
        assert idx.catalog.get_meta("schema_version") == str(SCHEMA_VERSION) == "2"
        assert {r.taken_source for r in idx.catalog.all_items("ok")} == {"exif", "mtime"}
    new = {os.path.basename(h["path"]): h for h in _search(index_dir)}
    for name, (_taken, want, source) in PHOTOS.items():
        assert (new[name]["date"], new[name]["date_source"]) == (want, source), name
    assert {n: h["score"] for n, h in new.items()} == before
    june = _search(index_dir, "--after", "2023-06", "--before", "2023-07")
    assert [os.path.basename(h["path"]) for h in june] == ["june.jpg"]
