"""The ANN snapshot at a small scale, shaped like 1M: it grows in place, and opening never rebuilds.

Real hnswlib and a real catalog, with the ANN threshold lowered so a few thousand vectors
use the snapshot. "No rebuild" is read from what a rebuild would change: the snapshot's
recorded build sequence and its element count (a rebuild leaves deleted elements out),
the hnswlib file itself, and the SQL a reader runs while opening.
"""

from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np

from retllm_lite.encode import EncoderInfo
from retllm_lite.index.store import Index
from retllm_lite.index.vectors import ExactSearch

DIM = 32
THRESHOLD = 500
INFO = EncoderInfo("synthetic", "0" * 64, "fp32", DIM, "/nowhere")


def clustered(n, seed=0):
    centres = np.random.default_rng(4321).standard_normal((30, DIM))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 30, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add(idx, vecs, start):
    with idx.catalog.transaction() as seq:
        for i, v in enumerate(vecs):
            idx.catalog.upsert_item(
                seq,
                v,
                key=f"item:s#{start + i}".encode(),
                modality="text",
                source="s",
                item_id=str(start + i),
                status="ok",
            )


def delete(idx, ids):
    with idx.catalog.transaction() as seq:
        idx.catalog.delete_items(ids, seq)


def writer(d):
    return Index.open(d, writable=True, ann_threshold=THRESHOLD)


def reader(d):
    return Index.open(d, ann_threshold=THRESHOLD)


def snapshot(d: Path) -> tuple[dict, hnswlib.Index]:
    with reader(d) as idx:
        meta = idx.catalog.meta()
    files = sorted(p.name for p in d.iterdir() if p.name.startswith("ann-"))
    assert files == [meta["ann_file"]]  # exactly one snapshot, the one the catalog names
    h = hnswlib.Index(space="ip", dim=DIM)
    h.load_index(str(d / meta["ann_file"]))
    return meta, h


def recall(idx, queries, k=10):
    labels, vecs = idx.catalog.load_vectors(DIM)
    exact = ExactSearch(labels, vecs)
    hits = 0
    for q in queries:
        truth = set(exact.search(q, k)[0].tolist())
        hits += len(truth & {row.id for row, _ in idx.search(q, k)})
    return hits / (k * len(queries))


def test_adding_grows_the_snapshot_in_place_and_reopening_does_not_rebuild(tmp_path):
    d = tmp_path / "idx"
    data = clustered(3000)
    with writer(d) as idx:
        idx.set_encoder(INFO)
        add(idx, data, 0)
        assert idx.update_ann() == "built"
    meta0, h0 = snapshot(d)
    build_seq = meta0["ann_build_seq"]
    assert h0.get_current_count() == 3000 and meta0["ann_elements"] == "3000" and meta0["ann_updates"] == "0"

    # grow: 400 new items, 100 deleted; the old snapshot is loaded, grown and written anew
    more = clustered(400, seed=2)
    with writer(d) as idx:
        add(idx, more, 3000)
        delete(idx, range(1, 101))
        assert idx.update_ann() == "updated"
    meta1, h1 = snapshot(d)
    assert meta1["ann_build_seq"] == build_seq  # same lineage: not rebuilt
    assert meta1["ann_updates"] == "1" and meta1["ann_file"] != meta0["ann_file"]
    # a rebuild would have left the 100 deleted elements out; growth keeps them, marked
    assert h1.get_current_count() == 3400 and meta1["ann_elements"] == "3400"
    assert h1.get_max_elements() >= 3400
    # the old elements are the old snapshot's, untouched (same vectors, same labels)
    kept = list(range(101, 3001))
    assert np.array_equal(np.asarray(h1.get_items(kept)), np.asarray(h0.get_items(kept)))
    assert set(h1.get_ids_list()) == set(range(1, 3401))

    # reopening: the snapshot is loaded as is; only what changed since is read from the catalog
    with writer(d) as idx:
        add(idx, clustered(50, seed=3), 3400)  # after the snapshot: a reader catches up in memory
    with reader(d) as idx:
        sql: list[str] = []
        idx.catalog.db.set_trace_callback(sql.append)
        assert idx.search_kind == "hnsw"
        idx.catalog.db.set_trace_callback(None)
        vector_reads = [s for s in sql if "JOIN vectors" in s or "FROM vectors" in s]
        assert vector_reads and all("vec_seq > " in s for s in vector_reads), vector_reads
        assert not any("COUNT(*) FROM vectors" in s for s in sql)
        for s in vector_reads:  # found through the vec_seq index, never a scan of all vectors
            plan = " ".join(str(r) for r in idx.catalog.db.execute("EXPLAIN QUERY PLAN " + s))
            assert "SCAN vectors" not in plan and "items_vec_seq" in plan, plan
        assert len(idx._searcher()) == 3350
        # every live item is found by its own vector; deleted ones are never returned
        live = {r.id: r for r in idx.catalog.all_items()}
        vecs = dict(zip(*idx.catalog.load_vectors(DIM), strict=True))
        missed = [i for i in live if i not in {row.id for row, _ in idx.search(vecs[i], 10)}]
        assert not missed
        for q in data[:100]:
            assert all(row.id > 100 for row, _ in idx.search(q, 10))
        assert recall(idx, clustered(100, seed=9)) >= 0.95
    meta2, _ = snapshot(d)
    assert {k: v for k, v in meta2.items() if k.startswith("ann_")} == {
        k: v for k, v in meta1.items() if k.startswith("ann_")
    }  # a reader never writes the snapshot

    # the writer catches up the same way: growth again, never a rebuild
    with writer(d) as idx:
        assert idx.update_ann() == "updated"
        assert idx.update_ann() == "current"
    meta3, h3 = snapshot(d)
    assert meta3["ann_build_seq"] == build_seq and meta3["ann_updates"] == "2"
    assert h3.get_current_count() == 3450


def test_many_deletions_rebuild_the_snapshot_without_them(tmp_path):
    d = tmp_path / "idx"
    with writer(d) as idx:
        idx.set_encoder(INFO)
        add(idx, clustered(2000), 0)
        assert idx.update_ann() == "built"
    meta0, _ = snapshot(d)
    with writer(d) as idx:
        delete(idx, range(1, 801))  # 40% > REBUILD_DELETED_FRACTION
        assert idx.update_ann() == "built"
    meta1, h1 = snapshot(d)
    assert int(meta1["ann_build_seq"]) > int(meta0["ann_build_seq"]) and meta1["ann_updates"] == "0"
    assert h1.get_current_count() == 1200 and set(h1.get_ids_list()) == set(range(801, 2001))
    with reader(d) as idx:
        assert recall(idx, clustered(100, seed=5)) >= 0.95
        assert all(row.id > 800 for q in clustered(50, seed=6) for row, _ in idx.search(q, 10))


def test_streamed_vectors_and_indexed_count_match_the_catalog(tmp_path):
    d = tmp_path / "idx"
    with writer(d) as idx:
        idx.set_encoder(INFO)
        add(idx, clustered(700), 0)
        delete(idx, [5, 6, 7])
        cat = idx.catalog
        assert cat.searchable_count() == cat.vector_count() == 697
        labels, vecs = cat.load_vectors(DIM)
        chunks = list(cat.iter_vectors(DIM, chunk=64))
        assert len(chunks) == 11
        assert np.array_equal(np.concatenate([c[0] for c in chunks]), labels)
        assert np.array_equal(np.concatenate([c[1] for c in chunks]), vecs)
