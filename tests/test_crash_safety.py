"""Kills, interrupts, concurrent readers and writers, full and read-only disks.

The indexer runs as a real subprocess (``python -m retllm_lite index``); the test kills it
with SIGKILL at random points many times, interrupts it with SIGINT, searches while it
writes, and checks after each event that the index opens, catalog and vectors agree,
and the next run finishes the work without re-embedding what was finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clip_fixtures import make_photo_folder
from retllm_lite.errors import RetllmError
from retllm_lite.index.store import Index

N_IMAGES = 300


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big")
    # 800x600: big enough that a run lasts a few seconds, so kills land mid-run
    make_photo_folder(root, N_IMAGES, start_seed=1000, size=(800, 600))
    return root


def index_cmd(folder, index_dir, model, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "retllm_lite",
        "index",
        str(folder),
        "--index",
        str(index_dir),
        "--clip-model",
        str(model),
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--json",
        *extra,
    ]


ANN = 64
ENV = {**os.environ, "RETLLM_ANN_THRESHOLD": str(ANN)}  # exercise ANN snapshot writes and reads too


def check_consistent(index_dir: Path) -> int:
    """The invariants a reader relies on; returns the number of embedded items."""
    with Index.open(index_dir, ann_threshold=ANN) as idx:
        db = idx.catalog.db
        ok = db.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0]
        assert ok == idx.catalog.vector_count()
        assert (
            db.execute("SELECT COUNT(*) FROM vectors WHERE id NOT IN (SELECT id FROM items)").fetchone()[0]
            == 0
        )
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        dupes = db.execute("SELECT COUNT(*) - COUNT(DISTINCT path) FROM items").fetchone()[0]
        assert dupes == 0
        if ok:
            info = idx.encoder_info()
            q = np.ones(info.dim, np.float32) / np.sqrt(info.dim)
            hits = idx.search(q, 5)
            assert len(hits) == min(5, ok) and all(row.status == "ok" for row, _ in hits)
        return ok


def wait_for_items(index_dir: Path, proc: subprocess.Popen, at_least: int = 1, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(RetllmError, Exception), Index.open(index_dir) as idx:
            if idx.catalog.vector_count() >= at_least:
                return
        time.sleep(0.05)


def test_sigkill_at_random_points_never_corrupts(big_folder, tiny_clip_dir, tmp_path):
    index_dir = tmp_path / "idx"
    rng = random.Random(7)
    done_before = 0
    kills = 0
    for _ in range(12):
        if kills >= 8:
            break
        proc = subprocess.Popen(
            index_cmd(big_folder, index_dir, tiny_clip_dir),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.05, 1.0))  # during start-up, the scan or the first batch
        else:  # somewhere in the middle: after a random amount of new work
            wait_for_items(index_dir, proc, at_least=done_before + rng.randint(1, 25))
            time.sleep(rng.uniform(0.0, 0.03))
        if proc.poll() is not None:  # it finished before the kill
            proc.communicate()
            done_before = check_consistent(index_dir)
            break
        proc.kill()
        proc.communicate()
        kills += 1
        if (index_dir / "catalog.sqlite3").exists():
            try:
                now = check_consistent(index_dir)
            except RetllmError as exc:  # killed before the catalog was created: empty is fine
                assert "empty" in str(exc) or "no index" in str(exc)
                now = 0
            assert now >= done_before  # committed work is never lost
            done_before = now
    assert kills >= 5, f"only {kills} kills landed before the runs finished"
    final = subprocess.run(
        index_cmd(big_folder, index_dir, tiny_clip_dir), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["indexed"] == N_IMAGES - done_before  # nothing finished was embedded again
    assert check_consistent(index_dir) == N_IMAGES
    with Index.open(index_dir, ann_threshold=ANN) as idx:
        assert idx.search_kind == "hnsw"
        leftovers = [p.name for p in index_dir.iterdir() if ".tmp" in p.name]
        ann_files = [p.name for p in index_dir.iterdir() if p.name.startswith("ann-")]
    assert not leftovers and len(ann_files) == 1


# The real CLI in a subprocess that sends itself SIGINT right after its second committed
# batch: the interrupt always lands mid-run, however fast the machine (no race to skip on).
SIGINT_AFTER_SECOND_BATCH = """
import os, signal, sys
from retllm_lite.index.indexer import Indexer
commit, batches = Indexer._commit, []
def interrupted_commit(self, *args, **kwargs):
    n = commit(self, *args, **kwargs)
    batches.append(n)
    if len(batches) == 2:
        os.kill(os.getpid(), signal.SIGINT)
    return n
Indexer._commit = interrupted_commit
from retllm_lite.cli import main
sys.argv = ["retllm", *sys.argv[1:]]
main(prog_name="retllm")
"""


def test_sigint_stops_cleanly_and_resumes(big_folder, tiny_clip_dir, tmp_path):
    index_dir = tmp_path / "idx"
    cmd = index_cmd(big_folder, index_dir, tiny_clip_dir)
    proc = subprocess.run(
        [sys.executable, "-c", SIGINT_AFTER_SECOND_BATCH, *cmd[3:]],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "again to resume" in err
    assert "Traceback" not in err
    done = json.loads(out)["indexed"]
    assert check_consistent(index_dir) == done
    final = subprocess.run(
        index_cmd(big_folder, index_dir, tiny_clip_dir), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert json.loads(final.stdout)["indexed"] == N_IMAGES - done


def test_searches_during_indexing_and_a_second_writer(big_folder, tiny_clip_dir, tmp_path):
    index_dir = tmp_path / "idx"
    writer = subprocess.Popen(
        index_cmd(big_folder, index_dir, tiny_clip_dir),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_items(index_dir, writer)
    # a second indexer on the same index: refused with a clear message...
    second = subprocess.run(
        index_cmd(big_folder, index_dir, tiny_clip_dir), env=ENV, capture_output=True, text=True, timeout=120
    )
    if writer.poll() is None:
        assert second.returncode == 1
        assert "another 'retllm index' is writing to this index" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    # ...or told to wait, it waits and then finds nothing left to do
    waiter = subprocess.Popen(
        index_cmd(big_folder, index_dir, tiny_clip_dir, "--wait", "300"),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_counts = []
    searches = 0
    while writer.poll() is None:
        with Index.open(index_dir) as idx:
            n = idx.catalog.vector_count()
            info = idx.encoder_info()
            q = np.random.default_rng(searches).standard_normal(info.dim).astype(np.float32)
            hits = idx.search(q / np.linalg.norm(q), 10)
            assert len(hits) == min(10, len(idx._searcher())) and all(r.status == "ok" for r, _ in hits)
            seen_counts.append(n)
            searches += 1
    writer.communicate()
    out, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err
    assert json.loads(out)["indexed"] == 0 and json.loads(out)["unchanged"] == N_IMAGES
    assert searches >= 3 and seen_counts == sorted(seen_counts)  # states only move forward
    assert check_consistent(index_dir) == N_IMAGES


needs_mount = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a small tmpfs"
)


@contextlib.contextmanager
def mounted(target: Path, *options: str):
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def tree_digest(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != "writer.lock"
    }


@needs_mount
def test_disk_full_stops_cleanly_and_keeps_the_index(big_folder, tiny_clip_dir, tmp_path):
    photos = tmp_path / "photos"
    make_photo_folder(photos, 12)
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=400k", "tmpfs") as small:
        index_dir = small / "idx"
        first = subprocess.run(index_cmd(photos, index_dir, tiny_clip_dir), capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        # fill the disk, then ask for 300 more images
        with open(small / "filler", "wb") as f:
            f.write(b"\0" * max(0, shutil.disk_usage(small).free - 40_000))
        full = subprocess.run(
            index_cmd(big_folder, index_dir, tiny_clip_dir),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert full.returncode == 1, (full.stdout, full.stderr)
        lines = full.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot write the index" in lines[0] and "full" in lines[0]
        assert "Traceback" not in full.stderr
        assert check_consistent(index_dir) >= 12
        search = subprocess.run(
            [
                sys.executable,
                "-m",
                "retllm_lite",
                "search",
                "--image",
                str(next(photos.rglob("*.jpg"))),
                "--index",
                str(index_dir),
                "--json",
                "-k",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert search.returncode == 0, search.stderr
        assert json.loads(search.stdout)[0]["score"] > 0.999
        # room again: the next run completes
        (small / "filler").unlink()
        extra = make_photo_folder(tmp_path / "extra", 20, start_seed=700)
        done = subprocess.run(
            index_cmd(extra[0].parent.parent, index_dir, tiny_clip_dir), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["indexed"] == 20
        check_consistent(index_dir)


@needs_mount
def test_read_only_index_searches_but_does_not_index(photos, tiny_clip_dir, tmp_path):
    index_dir = tmp_path / "idx"
    assert subprocess.run(index_cmd(photos, index_dir, tiny_clip_dir), capture_output=True).returncode == 0
    before = tree_digest(index_dir)
    with mounted(index_dir, "--bind", str(index_dir)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(index_dir)], check=True)
        make_photo_folder(photos / "more", 3, start_seed=500)
        res = subprocess.run(index_cmd(photos, index_dir, tiny_clip_dir), capture_output=True, text=True)
        assert res.returncode == 1
        assert len(res.stderr.strip().splitlines()) == 1 and "read-only" in res.stderr, res.stderr
        search = subprocess.run(
            [
                sys.executable,
                "-m",
                "retllm_lite",
                "search",
                "a red circle",
                "--index",
                str(index_dir),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert search.returncode == 0, search.stderr
        assert len(json.loads(search.stdout)) == 10
    assert tree_digest(index_dir) == before
