"""``retllm index DIR --watch`` in a real subprocess: the index follows files that appear,
change, move and disappear, a file written slowly in pieces is indexed once complete (never
half), and SIGINT leaves everything committed."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from clip_fixtures import draw_photo

pytest.importorskip("watchfiles")


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    draw_photo(seed, (160, 120)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rows(index_dir) -> dict[str, tuple]:
    """{file name: (id, status, fingerprint, has vector)} as committed (a reader's view)."""
    path = index_dir / "catalog.sqlite3"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT items.path, items.id, status, fingerprint, vectors.id IS NOT NULL "
            "FROM items LEFT JOIN vectors ON vectors.id = items.id"
        ).fetchall()
    except sqlite3.OperationalError:  # being created
        return {}
    finally:
        db.close()
    return {os.path.relpath(os.fsdecode(p), index_dir.parent / "watched"): r for p, *r in rows}


def _wait_for(index_dir, test, what: str, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(index_dir)
        if test(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"the index never showed {what}: {_rows(index_dir)}")


def test_index_watch_follows_the_folder_and_sigint_commits(tmp_path, tiny_clip_dir):
    root = tmp_path / "watched"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg(1))
    (root / "b.jpg").write_bytes(_jpeg(2))
    index_dir = tmp_path / "idx"
    cmd = [sys.executable, "-m", "retllm_lite", "index", str(root), "--index", str(index_dir)]
    cmd += ["--clip-model", str(tiny_clip_dir), "--watch", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rows = _wait_for(index_dir, lambda r: {"a.jpg", "b.jpg"} <= r.keys(), "the first two files")
        first_a = rows["a.jpg"]

        (root / "c.jpg").write_bytes(_jpeg(3))  # appears
        _wait_for(index_dir, lambda r: "c.jpg" in r and r["c.jpg"][1] == "ok", "a new file")

        (root / "a.jpg").write_bytes(_jpeg(4))  # changes
        rows = _wait_for(index_dir, lambda r: r["a.jpg"][2] != first_a[2], "a changed file")
        assert rows["a.jpg"][1] == "ok" and rows["a.jpg"][3]

        b_id = rows["b.jpg"][0]
        os.rename(root / "b.jpg", root / "sub" / "b2.jpg")  # moves
        rows = _wait_for(index_dir, lambda r: "sub/b2.jpg" in r and "b.jpg" not in r, "a moved file")
        assert rows["sub/b2.jpg"][0] == b_id  # same row and vector: recognised, not re-embedded

        os.unlink(root / "c.jpg")  # disappears
        _wait_for(index_dir, lambda r: "c.jpg" not in r, "a deleted file")

        # written slowly in pieces: never indexed half-written (no row at all until complete)
        data = _jpeg(5)
        pieces = [data[i : i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
        with open(root / "slow.jpg", "wb") as f:
            for piece in pieces:
                f.write(piece)
                f.flush()
                os.fsync(f.fileno())
                time.sleep(0.5)
                assert "slow.jpg" not in _rows(index_dir), "indexed while still being written"
        rows = _wait_for(index_dir, lambda r: "slow.jpg" in r, "the slowly written file")
        assert rows["slow.jpg"][1] == "ok" and rows["slow.jpg"][3], rows["slow.jpg"]
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "everything seen is committed" in err, err
    rows = _rows(index_dir)
    assert set(rows) == {"a.jpg", "sub/b2.jpg", "slow.jpg"}
    assert all(status == "ok" and has_vec for _id, status, _fp, has_vec in rows.values()), rows
    # a fresh run finds nothing left to do: all of it was committed
    again = subprocess.run(
        [sys.executable, "-m", "retllm_lite", "index", str(root), "--index", str(index_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert (
        '"indexed": 0' in again.stdout and '"removed": 0' in again.stdout and '"unchanged": 3' in again.stdout
    )


def test_serve_watch_follows_a_folder_with_the_same_watcher(tmp_path, tiny_clip_dir):
    """``retllm serve --watch DIR``: a new index is built first, then files added and deleted
    while serving show in the API; Ctrl-C stops server and watcher with everything committed."""
    import json
    import urllib.request

    pytest.importorskip("uvicorn")
    root = tmp_path / "watched"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg(11))
    index_dir = tmp_path / "idx"
    cmd = [sys.executable, "-m", "retllm_lite", "serve", "--index", str(index_dir), "--port", "0"]
    cmd += ["--clip-model", str(tiny_clip_dir), "--watch", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("open "):
                url = line.split()[1].rstrip("/")
                break
        assert url, proc.stderr.read()

        def paths() -> set[str]:
            with urllib.request.urlopen(f"{url}/api/search?q=photo&k=50", timeout=30) as r:
                return {os.path.basename(h["path"]) for h in json.load(r)["hits"]}

        assert paths() == {"a.jpg"}
        (root / "b.jpg").write_bytes(_jpeg(12))
        deadline = time.monotonic() + 90
        while paths() != {"a.jpg", "b.jpg"} and time.monotonic() < deadline:
            time.sleep(0.3)
        assert paths() == {"a.jpg", "b.jpg"}
        os.unlink(root / "a.jpg")
        while paths() != {"b.jpg"} and time.monotonic() < deadline:
            time.sleep(0.3)
        assert paths() == {"b.jpg"}
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=90)
    assert "Traceback" not in err, err
    assert set(_rows_of(index_dir, root)) == {"b.jpg"}


def _rows_of(index_dir, root) -> dict[str, tuple]:
    db = sqlite3.connect(f"file:{index_dir / 'catalog.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT path, status FROM items").fetchall()
    finally:
        db.close()
    return {os.path.relpath(os.fsdecode(p), root): s for p, s in rows}
