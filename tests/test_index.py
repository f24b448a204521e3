"""Indexing photo folders: self-retrieval, incremental updates, moves, errors, resume, ANN."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from clip_fixtures import draw_photo, make_photo_folder
from retllm_lite.encode import EncoderInfo, load_encoder
from retllm_lite.errors import EncoderMismatch, IndexLocked
from retllm_lite.index.indexer import Indexer
from retllm_lite.index.store import Index
from retllm_lite.index.vectors import ExactSearch
from retllm_lite.pipeline import Retriever


@pytest.fixture
def encoder(tiny_clip_dir):
    return load_encoder(tiny_clip_dir)


def run_index(index_dir, encoder, *folders, **kw):
    with Index.open(index_dir, writable=True) as idx:
        return Indexer(idx, encoder, batch_size=kw.pop("batch_size", 8), **kw).index_folders(folders)


def consistent(index_dir) -> dict:
    """Catalog invariants that must hold after any run, finished or not."""
    with Index.open(index_dir) as idx:
        db = idx.catalog.db
        ok = db.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0]
        vecs = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        orphans = db.execute(
            "SELECT COUNT(*) FROM vectors WHERE id NOT IN (SELECT id FROM items)"
        ).fetchone()[0]
        unlabelled = db.execute(
            "SELECT COUNT(*) FROM items WHERE status='ok' AND (vector_label IS NULL OR vector_label != id)"
        ).fetchone()[0]
        assert ok == vecs and orphans == 0 and unlabelled == 0
        return {"ok": ok}


def test_every_image_finds_itself_first(photos, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    report = run_index(index_dir, encoder, photos)
    files = sorted(photos.rglob("*.jpg"))
    assert report.indexed == len(files) == 24 and report.failed == 0
    with Retriever(Index.open(index_dir), encoder) as r:
        for f in files:
            hits = r.search(image=f, k=3)
            assert hits[0].path == str(f)
            assert hits[0].score == pytest.approx(1.0, abs=1e-3)
            assert [h.rank for h in hits] == [1, 2, 3]


def test_incremental_add_change_delete_move_copy(photos, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    run_index(index_dir, encoder, photos)
    files = sorted(photos.rglob("*.jpg"))
    with Index.open(index_dir) as idx:
        moved_id = idx.catalog.by_key(os.fsencode(files[0])).id

    # nothing changed: nothing embedded
    again = run_index(index_dir, encoder, photos)
    assert (again.indexed, again.unchanged, again.removed) == (0, 24, 0)

    new = make_photo_folder(photos / "new", 3, start_seed=100)
    (photos / "gone").mkdir()
    shutil.move(files[0], photos / "gone" / "moved.jpg")  # move
    shutil.copy(files[1], photos / "copy.jpg")  # copy
    files[2].unlink()  # delete
    draw_photo(999).save(files[3], quality=90)  # change content in place
    st = files[4].stat()
    os.utime(files[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch only

    rep = run_index(index_dir, encoder, photos)
    assert rep.indexed == len(new) + 1  # 3 new + 1 changed
    assert (rep.moved, rep.copied, rep.removed, rep.touched) == (1, 1, 1, 1)
    assert consistent(index_dir)["ok"] == 24 + 3 + 1 - 1

    with Index.open(index_dir) as idx:
        row = idx.catalog.by_key(os.fsencode(photos / "gone" / "moved.jpg"))
        assert row.id == moved_id  # same row, same vector label: not re-embedded
        assert idx.catalog.by_key(os.fsencode(files[2])) is None
    with Retriever(Index.open(index_dir), encoder) as r:
        assert r.search(image=files[3], k=1)[0].path == str(files[3])
        assert r.search(image=photos / "gone" / "moved.jpg", k=1)[0].score > 0.999
        for p in new:
            assert r.search(image=p, k=1)[0].path == str(p)


def test_other_folders_are_left_alone(photos, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    other = make_photo_folder(tmp_path / "other", 4, start_seed=50)
    run_index(index_dir, encoder, photos)
    run_index(index_dir, encoder, tmp_path / "other")
    rep = run_index(index_dir, encoder, photos)  # re-scanning photos must not drop 'other'
    assert rep.removed == 0
    assert consistent(index_dir)["ok"] == 24 + len(other)


def test_bad_files_are_recorded_not_fatal(photos, encoder, tmp_path):
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.jpg").write_text("not an image at all")
    good = (photos / "album0" / "img_0000.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 3])
    index_dir = tmp_path / "idx"
    rep = run_index(index_dir, encoder, photos)
    assert rep.indexed == 24 and rep.failed == 3
    with Index.open(index_dir) as idx:
        errors = dict(idx.errors())
    assert errors[str(photos / "empty.jpg")] == "empty file (0 bytes)"
    assert "not an image" in errors[str(photos / "text.jpg")]
    assert (
        "truncated" in errors[str(photos / "truncated.jpg")]
        or "decode" in errors[str(photos / "truncated.jpg")]
    )
    # unchanged bad files are not retried; fixed ones are
    rep2 = run_index(index_dir, encoder, photos)
    assert rep2.failed == 0 and rep2.unchanged == 27
    draw_photo(5).save(photos / "text.jpg", "JPEG")
    rep3 = run_index(index_dir, encoder, photos)
    assert rep3.indexed == 1


def test_resume_after_interrupt(photos, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    calls = []

    def interrupt_after_two_batches(stage, done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    rep = run_index(index_dir, encoder, photos, progress=interrupt_after_two_batches)
    assert rep.interrupted and rep.indexed == 16
    assert consistent(index_dir)["ok"] == 16
    rep2 = run_index(index_dir, encoder, photos)
    assert not rep2.interrupted and rep2.indexed == 8 and rep2.unchanged == 16
    assert consistent(index_dir)["ok"] == 24


def test_encoder_mismatch_is_refused(photos, tiny_clip_dir, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    run_index(index_dir, encoder, photos)
    fp32 = load_encoder(tiny_clip_dir, variant="fp32")
    with pytest.raises(EncoderMismatch, match="clip-model"):
        run_index(index_dir, fp32, photos)
    with pytest.raises(EncoderMismatch):
        Retriever(Index.open(index_dir), fp32)


def test_one_writer_at_a_time(tmp_path):
    with Index.open(tmp_path / "idx", writable=True), pytest.raises(IndexLocked, match="another"):
        Index.open(tmp_path / "idx", writable=True)
    Index.open(tmp_path / "idx", writable=True).close()  # released


# ---- ANN vs exact on clustered data (real hnswlib, real catalog) ---------------------------
DIM = 32
INFO = EncoderInfo("synthetic", "0" * 64, "fp32", DIM, "/nowhere")


def clustered(n, n_clusters=40, seed=0):
    """Points around 40 fixed centres (queries come from the same clusters as the data)."""
    centres = np.random.default_rng(1234).standard_normal((n_clusters, DIM))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, n_clusters, n)] + 0.15 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add_vectors(idx, vecs, start=0):
    with idx.catalog.transaction() as seq:
        for i, v in enumerate(vecs):
            key = f"item:synthetic#{start + i}".encode()
            idx.catalog.upsert_item(
                seq,
                v,
                key=key,
                modality="text",
                source="synthetic",
                item_id=str(start + i),
                text=f"t{start + i}",
                status="ok",
            )


def recall(index_dir, queries, k=10):
    with Index.open(index_dir, ann_threshold=500) as idx:
        assert idx.search_kind == "hnsw"
        labels, vecs = idx.catalog.load_vectors(DIM)
        exact = ExactSearch(labels, vecs)
        hits = 0
        for q in queries:
            kth = exact.search(q, k)[1][-1]
            # a hit is any true top-k item; ties at the k-th score count too
            hits += sum(score >= kth - 1e-6 for _, score in idx.search(q, k))
        return hits / (k * len(queries))


def test_hnsw_agrees_with_exact_and_catches_up_from_catalog(tmp_path):
    index_dir = tmp_path / "idx"
    data = clustered(3000)
    with Index.open(index_dir, writable=True, ann_threshold=500) as idx:
        idx.set_encoder(INFO)
        add_vectors(idx, data)
        assert idx.update_ann() == "built"
        assert idx.update_ann() == "current"
    queries = clustered(50, seed=1)
    assert recall(index_dir, queries) >= 0.95

    # changes after the snapshot: a reader applies them from the catalog
    with Index.open(index_dir, writable=True, ann_threshold=500) as idx:
        add_vectors(idx, clustered(200, seed=2), start=3000)
        with idx.catalog.transaction() as seq:
            idx.catalog.delete_items(range(1, 101), seq)
    assert recall(index_dir, queries) >= 0.95
    with Index.open(index_dir, ann_threshold=500) as idx:
        for q in data[:100]:  # deleted items are never returned
            assert all(row.id > 100 for row, _ in idx.search(q, 5))
    with Index.open(index_dir, writable=True, ann_threshold=500) as idx:
        assert idx.update_ann() == "updated"
    assert recall(index_dir, queries) >= 0.95
