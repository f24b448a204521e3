"""Scale-out: the LanceDB backend (a local folder, and S3 on a moto server started here) and
embedding on a local Ray with 2 CPUs, checked against the local index on the same files.

Real components throughout: lancedb, Ray Data actors running onnxruntime, moto's S3 server
spoken to by lancedb's own object-store client and boto3. The Ray runs go through the CLI in a
subprocess, so a kill -9 lands on the real process tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip_fixtures import draw_photo, make_photo_folder
from retllm_lite.encode import load_encoder
from retllm_lite.errors import EncoderMismatch, IndexLocked
from retllm_lite.index.backend import make_indexer, open_index
from retllm_lite.index.indexer import Indexer
from retllm_lite.index.lance_store import LanceIndex
from retllm_lite.index.store import Index
from retllm_lite.pipeline import Retriever
from torch_free import run_without_torch

# No importorskip: README's test command installs the scale extra (in `all`), so a missing
# lancedb, ray or moto fails here instead of quietly skipping the scale tests.
pytestmark = pytest.mark.scale


@pytest.fixture
def fp32(tiny_clip_dir):
    # fp32: an embedding does not depend on its batch-mates (int8 activations are scaled per call),
    # so the local and distributed paths must give the same vectors, hence the same top-k
    return load_encoder(tiny_clip_dir, variant="fp32")


def local_topk(index_dir, encoder, queries, k=5):
    with Retriever(Index.open(index_dir), encoder) as r:
        return [[(h.path, h.score) for h in r.search(image=q, k=k)] for q in queries]


def topk(spec, encoder, queries, k=5, **open_kw):
    with Retriever(open_index(spec, **open_kw), encoder) as r:
        return [[(h.path, h.score) for h in r.search(image=q, k=k)] for q in queries]


def assert_same_topk(a, b):
    assert [[p for p, _ in hits] for hits in a] == [[p for p, _ in hits] for hits in b]
    for ha, hb in zip(a, b, strict=True):
        assert [s for _, s in ha] == pytest.approx([s for _, s in hb], abs=1e-5)


def lance_rows(uri, **kw) -> list[dict]:
    with LanceIndex.open(uri, **kw) as idx:
        return idx.scan_columns(["id", "path", "status", "fingerprint"]).to_pylist()


# ---- LanceDB on a local folder -------------------------------------------------------------------
def test_lance_folder_incremental_moves_errors_and_encoder(photos, fp32, tiny_clip_dir, tmp_path):
    uri = tmp_path / "lance-idx"
    spec = f"lance:{uri}"
    files = sorted(photos.rglob("*.jpg"))
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.jpg").write_text("not an image at all")
    with open_index(spec, writable=True) as idx:
        rep = make_indexer(idx, fp32, batch_size=8, commit_rows=8).index_folders([photos])
    assert (rep.indexed, rep.failed) == (24, 2)

    run_index_local = tmp_path / "local-idx"
    with Index.open(run_index_local, writable=True) as idx:
        Indexer(idx, fp32, batch_size=8).index_folders([photos])
    assert_same_topk(topk(spec, fp32, files[:6]), local_topk(run_index_local, fp32, files[:6]))

    with open_index(spec) as idx:
        assert not idx.writable
        with pytest.raises(ValueError, match="writable"):
            make_indexer(idx, fp32)
        errors = dict(idx.errors())
        assert errors[str(photos / "empty.jpg")] == "empty file (0 bytes)"
        assert "not an image" in errors[str(photos / "text.jpg")]
        assert idx.stats()["items"]["vectors"] == 24
        moved_id = next(r["id"] for r in lance_rows(str(uri)) if r["path"] == os.fsencode(files[0]))

    # nothing changed: nothing embedded
    with open_index(spec, writable=True) as idx:
        again = make_indexer(idx, fp32, batch_size=8).index_folders([photos])
    assert (again.indexed, again.unchanged, again.removed) == (0, 26, 0)

    new = make_photo_folder(photos / "new", 3, start_seed=100)
    (photos / "gone").mkdir()
    shutil.move(files[0], photos / "gone" / "moved.jpg")
    shutil.copy(files[1], photos / "copy.jpg")
    files[2].unlink()
    draw_photo(999).save(files[3], quality=90)
    st = files[4].stat()
    os.utime(files[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    draw_photo(5).save(photos / "text.jpg", "JPEG")  # a bad file fixed
    with open_index(spec, writable=True) as idx:
        rep = make_indexer(idx, fp32, batch_size=8).index_folders([photos])
    assert rep.indexed == len(new) + 2  # 3 new, 1 changed, 1 fixed
    assert (rep.moved, rep.copied, rep.removed, rep.touched, rep.failed) == (1, 1, 1, 1, 0)
    rows = lance_rows(str(uri))
    assert len(rows) == len({r["path"] for r in rows}) == len({r["id"] for r in rows}) == 24 + 3 + 1 + 2 - 1
    moved = next(r for r in rows if r["path"] == os.fsencode(photos / "gone" / "moved.jpg"))
    assert moved["id"] == moved_id  # same row: not re-embedded
    with Retriever(open_index(spec), fp32) as r:
        assert r.search(image=files[3], k=1)[0].path == str(files[3])
        assert r.search(image=photos / "gone" / "moved.jpg", k=1)[0].score > 0.999
        assert r.search(image=photos / "text.jpg", k=1)[0].path == str(photos / "text.jpg")

    # the CLI searches it like a local index, without torch
    out = run_without_torch(["search", "--image", files[3], "--index", spec, "-k", "2", "--json"])[0]
    assert json.loads(out)[0]["path"] == str(files[3])

    # the encoder is checked, writers are one at a time
    int8 = load_encoder(tiny_clip_dir, variant="int8")
    with open_index(spec, writable=True) as idx, pytest.raises(EncoderMismatch, match="clip-model"):
        make_indexer(idx, int8)
    with pytest.raises(EncoderMismatch):
        Retriever(open_index(spec), int8)
    with open_index(spec, writable=True), pytest.raises(IndexLocked):
        open_index(spec, writable=True)


def test_lance_vector_index_above_threshold_agrees_with_exact(photos, fp32, tmp_path):
    """Above the crossover the store builds its vector index; searches still find the same items."""
    make_photo_folder(photos / "more", 240, start_seed=300, size=(64, 48))
    uri = str(tmp_path / "lance-ann")
    with LanceIndex.open(uri, writable=True, index_threshold=256) as idx:
        rep = make_indexer(idx, fp32, batch_size=32).index_folders([photos])
        assert rep.ann == "built" and idx.has_vector_index()
    queries = sorted(photos.rglob("*.jpg"))[::20]
    with LanceIndex.open(uri, index_threshold=256) as idx:
        assert idx.stats()["ann"] == "IVF_HNSW_SQ"
        with Retriever(idx, fp32) as r:
            for q in queries:  # every image finds itself first, through the vector index
                assert r.search(image=q, k=1)[0].path == str(q)
    new = make_photo_folder(photos / "later", 4, start_seed=900, size=(64, 48))
    with LanceIndex.open(uri, writable=True, index_threshold=256) as idx:
        assert make_indexer(idx, fp32).index_folders([photos]).ann == "updated"
    with Retriever(LanceIndex.open(uri), fp32) as r:
        for q in new:
            assert r.search(image=q, k=1)[0].path == str(q)


# ---- LanceDB on S3 (moto's server on 127.0.0.1) ------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "retllm-test",
        "AWS_SECRET_ACCESS_KEY": "retllm-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket="photo-index")
    try:
        yield url, client
    finally:
        server.stop()


def test_lance_on_s3_compatible_endpoint(photos, fp32, tmp_path, s3_endpoint):
    url, client = s3_endpoint
    spec = "lance:s3://photo-index/family"
    options = {
        "endpoint": url,
        "aws_access_key_id": "retllm-test",
        "aws_secret_access_key": "retllm-test-secret",
        "region": "us-east-1",
        "allow_http": "true",
    }
    files = sorted(photos.rglob("*.jpg"))
    with LanceIndex.open("s3://photo-index/family", writable=True, storage_options=options) as idx:
        rep = make_indexer(idx, fp32, batch_size=8, commit_rows=8).index_folders([photos])
    assert rep.indexed == 24
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="photo-index")["Contents"]]
    assert any(k.startswith("family/items.lance/") for k in keys)  # really in the bucket

    local = tmp_path / "local-idx"
    with Index.open(local, writable=True) as idx:
        Indexer(idx, fp32, batch_size=8).index_folders([photos])
    # the factory path (--index lance:s3://...) takes the endpoint and keys from AWS_* variables
    assert_same_topk(topk(spec, fp32, files[:5]), local_topk(local, fp32, files[:5]))

    files[0].unlink()
    with open_index(spec, writable=True) as idx:
        rep = make_indexer(idx, fp32).index_folders([photos])
    assert (rep.indexed, rep.removed, rep.unchanged) == (0, 1, 23)
    with open_index(spec) as idx:
        assert idx.stats()["items"]["vectors"] == 23


# ---- Ray: a local Ray with 2 CPUs, through the CLI ---------------------------------------------
N_RAY = 160


@pytest.fixture(scope="module")
def ray_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-photos")
    make_photo_folder(root, N_RAY, start_seed=2000, size=(640, 480))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def ray_index_cmd(folder, uri, model, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "retllm_lite",
        "index",
        str(folder),
        "--index",
        f"lance:{uri}",
        "--clip-model",
        str(model),
        "--variant",
        "fp32",
        "--batch-size",
        "4",
        "--commit-rows",
        "4",
        "--json",
        "--no-progress",
        "--ray",
        "--ray-workers",
        "2",
        *extra,
    ]


def committed(uri) -> int:
    with contextlib.suppress(Exception), LanceIndex.open(str(uri)) as idx:
        return idx.count()
    return 0


def session_processes(sid: int, needle: str) -> list[int]:
    """Processes of the session the test started whose command line contains ``needle``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getsid(int(entry)) != sid:
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if needle in cmd:
                out.append(int(entry))
    return out


def end_session(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group the test started (Ray's own processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_committed(uri, proc, at_least: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        n = committed(uri)
        if n >= at_least:
            return n
        time.sleep(0.05)
    return committed(uri)


def check_complete(uri, folder) -> list[dict]:
    rows = lance_rows(str(uri))
    on_disk = {os.fsencode(p) for p in folder.rglob("*.jpg")}
    assert {r["path"] for r in rows} == on_disk  # nothing lost
    assert len(rows) == len(on_disk) == len({r["id"] for r in rows})  # nothing duplicated
    assert [r["path"] for r in rows if r["status"] == "error"] == [os.fsencode(folder / "broken.jpg")]
    return rows


def test_ray_index_survives_a_lost_actor_and_matches_local_topk(ray_folder, tiny_clip_dir, fp32, tmp_path):
    """A Ray worker killed mid-run: its task is retried and the run completes with every file."""
    uri = tmp_path / "ray-lance"
    proc = subprocess.Popen(
        ray_index_cmd(ray_folder, uri, tiny_clip_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_committed(uri, proc, 8)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        actors = session_processes(proc.pid, "MapWorker")
        assert actors, "no Ray Data actor found while the run was going"
        os.kill(actors[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        end_session(proc)
    assert proc.returncode == 0, err.decode()[-3000:]
    report = json.loads(out)
    assert report["indexed"] == N_RAY and report["failed"] == 1
    check_complete(uri, ray_folder)

    queries = sorted(ray_folder.rglob("*.jpg"))[:: N_RAY // 6][:6]
    queries = [q for q in queries if q.name != "broken.jpg"]
    local = tmp_path / "local-idx"
    with Index.open(local, writable=True) as idx:
        Indexer(idx, fp32, batch_size=8).index_folders([ray_folder])
    assert_same_topk(topk(f"lance:{uri}", fp32, queries), local_topk(local, fp32, queries))


def test_ray_kill_9_then_resume_loses_and_duplicates_nothing(ray_folder, tiny_clip_dir, fp32, tmp_path):
    uri = tmp_path / "ray-lance-killed"
    proc = subprocess.Popen(
        ray_index_cmd(ray_folder, uri, tiny_clip_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        before = wait_committed(uri, proc, 12)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # the driver: the one writer
    finally:
        end_session(proc)
    kept = committed(uri)
    assert before <= kept < N_RAY + 1
    rows = lance_rows(str(uri))
    assert len(rows) == len({r["path"] for r in rows}) == len({r["id"] for r in rows})

    done = subprocess.run(ray_index_cmd(ray_folder, uri, tiny_clip_dir), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    assert report["unchanged"] == kept  # what was committed is not embedded again
    assert report["indexed"] + report["failed"] == N_RAY + 1 - kept
    check_complete(uri, ray_folder)
    queries = [q for q in sorted(ray_folder.rglob("*.jpg"))[:: N_RAY // 4] if q.name != "broken.jpg"]
    local = tmp_path / "local-idx"
    with Index.open(local, writable=True) as idx:
        Indexer(idx, fp32, batch_size=8).index_folders([ray_folder])
    assert_same_topk(topk(f"lance:{uri}", fp32, queries), local_topk(local, fp32, queries))
