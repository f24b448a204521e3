"""Text and image+text collections: every retrieval direction, self-retrieval, add/delete."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clip_fixtures import make_photo_folder
from retllm_lite.cli import cli
from retllm_lite.encode import load_encoder, normalize
from retllm_lite.index.indexer import Indexer
from retllm_lite.index.store import Index
from retllm_lite.pipeline import Retriever

CAPTIONS = [
    "a red circle on a blue background",
    "two green squares next to each other",
    "a yellow triangle in the corner",
    "an orange ellipse over grey stripes",
    "a purple rectangle and a white dot",
    "three small black circles in a row",
]


@pytest.fixture
def corpus(tmp_path):
    """A photo folder, a caption .txt, a texts .jsonl and an items .jsonl (relative image paths)."""
    photos = make_photo_folder(tmp_path / "photos", 6, start_seed=200)
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS[:4]) + "\n\n")
    (tmp_path / "texts.jsonl").write_text(
        "\n".join(json.dumps({"id": f"t{i}", "text": c}) for i, c in enumerate(CAPTIONS[4:]))
    )
    items_dir = tmp_path / "items"
    item_photos = make_photo_folder(items_dir, 4, start_seed=300)
    rows = [
        {"id": f"i{i}", "image": str(p.relative_to(tmp_path)), "text": CAPTIONS[i]}
        for i, p in enumerate(item_photos)
    ]
    rows.append({"id": "img-only", "image": str(item_photos[0].relative_to(tmp_path))})
    rows.append({"id": "txt-only", "text": "just words"})
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"root": tmp_path, "photos": photos, "item_photos": item_photos}


@pytest.fixture
def encoder(tiny_clip_dir):
    return load_encoder(tiny_clip_dir)


def build(index_dir, encoder, corpus, weight=None):
    with Index.open(index_dir, writable=True) as idx:
        ix = Indexer(idx, encoder, batch_size=4, item_image_weight=weight)
        reports = [ix.index_folders([corpus["root"] / "photos"])]
        reports.append(ix.index_collection(corpus["root"] / "captions.txt", "texts"))
        reports.append(ix.index_collection(corpus["root"] / "texts.jsonl", "texts"))
        reports.append(ix.index_collection(corpus["root"] / "items.jsonl", "items"))
    return reports


def test_catalog_keeps_id_modality_and_source(corpus, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    reports = build(index_dir, encoder, corpus)
    assert [r.indexed for r in reports] == [6, 4, 2, 6]
    with Index.open(index_dir) as idx:
        rows = list(idx.catalog.all_items())
    by_mod = {}
    for r in rows:
        by_mod.setdefault(r.modality, []).append(r)
    assert (
        len(by_mod["image"]) == 6 + 1 and len(by_mod["text"]) == 4 + 2 + 1 and len(by_mod["image+text"]) == 4
    )
    caption3 = next(r for r in rows if r.item_id == "3" and r.source.endswith("captions.txt"))
    assert caption3.text == CAPTIONS[2]  # .txt ids are line numbers
    item0 = next(r for r in rows if r.item_id == "i0")
    assert item0.fs_path == corpus["item_photos"][0].resolve()
    assert item0.source == str(corpus["root"] / "items.jsonl")


def test_every_direction_and_self_retrieval(corpus, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    build(index_dir, encoder, corpus, weight=0.6)
    with Retriever(Index.open(index_dir), encoder) as r:
        # text -> text: a caption finds itself
        for caption in CAPTIONS:
            hits = r.search(text=caption, k=3, modality="text")
            assert hits[0].text == caption and hits[0].score == pytest.approx(1.0, abs=1e-3)
            assert all(h.modality == "text" for h in hits)
        # image -> image: a photo finds itself
        for p in corpus["photos"]:
            hits = r.search(image=p, k=2, modality="image")
            assert hits[0].path == str(p) and all(h.modality == "image" for h in hits)
        # image -> text, text -> image: right modality back
        assert {h.modality for h in r.search(image=corpus["photos"][0], k=5, modality="text")} == {"text"}
        assert {h.modality for h in r.search(text="a red circle", k=5, modality="image")} == {"image"}
        # image+text -> image+text: the composed query with the index's weight is the item's own vector
        for i, p in enumerate(corpus["item_photos"]):
            hits = r.search(text=CAPTIONS[i], image=p, image_weight=0.6, k=2, modality="image+text")
            assert hits[0].item_id == f"i{i}" and hits[0].score == pytest.approx(1.0, abs=1e-3)
            assert hits[0].text == CAPTIONS[i] and hits[0].path == str(p.resolve())
        # image+text -> image
        assert {h.modality for h in r.search(text="x", image=corpus["photos"][1], k=4, modality="image")} == {
            "image"
        }
        # no filter: everything is searchable together
        assert len(r.search(text="anything", k=50)) == 6 + 7 + 4 + 1


def test_fused_vector_is_documented_formula(corpus, tiny_clip_dir, tmp_path):
    # fp32: dynamic int8 quantisation makes a vector depend slightly on its batch neighbours
    encoder = load_encoder(tiny_clip_dir, variant="fp32")
    index_dir = tmp_path / "idx"
    build(index_dir, encoder, corpus, weight=0.25)
    with Index.open(index_dir) as idx:
        row = next(r for r in idx.catalog.all_items() if r.item_id == "i1")
        stored = np.frombuffer(
            idx.catalog.db.execute("SELECT vec FROM vectors WHERE id=?", (row.id,)).fetchone()[0], np.float32
        )
    img = encoder.embed_images([corpus["item_photos"][1]])[0]
    txt = encoder.embed_texts([CAPTIONS[1]])[0]
    assert np.allclose(stored, normalize(0.25 * img + 0.75 * txt), atol=1e-5)


def test_collections_stay_consistent_through_edits(corpus, encoder, tmp_path):
    index_dir = tmp_path / "idx"
    build(index_dir, encoder, corpus)
    root = corpus["root"]
    lines = CAPTIONS[:4]
    lines[1] = "a changed caption"
    (root / "captions.txt").write_text("\n".join(lines[:3]) + "\nnew fifth line\n")  # line 4 changed too
    items = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]
    items = [it for it in items if it["id"] != "i3"]  # delete one item
    items.append({"id": "broken", "image": "items/nope.jpg", "text": "missing image"})
    (root / "items.jsonl").write_text("\n".join(json.dumps(it) for it in items) + "\n{not json\n")
    with Index.open(index_dir, writable=True) as idx:
        ix = Indexer(idx, encoder, batch_size=4)
        rep_t = ix.index_collection(root / "captions.txt", "texts")
        rep_i = ix.index_collection(root / "items.jsonl", "items")
        # re-scanning the folder that holds item images must not drop the items
        rep_f = ix.index_folders([root / "items"])
    assert (rep_t.indexed, rep_t.unchanged, rep_t.removed) == (2, 2, 0)
    assert (rep_i.indexed, rep_i.unchanged, rep_i.removed, rep_i.failed) == (0, 5, 1, 1)
    assert rep_i.skipped == 1  # the bad JSON line
    assert rep_f.removed == 0
    with Index.open(index_dir) as idx:
        errors = dict(idx.errors())
        ok = idx.catalog.db.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0]
        vecs = idx.catalog.vector_count()
    assert ok == vecs
    assert any("nope.jpg" in reason for reason in errors.values())
    assert any(path.endswith("items.jsonl:" + str(len(items) + 1)) for path in errors)
    with Retriever(Index.open(index_dir), encoder) as r:
        assert r.search(text="a changed caption", k=1, modality="text")[0].text == "a changed caption"
        assert all(h.item_id != "i3" for h in r.search(text="x", k=50))


def test_cli_texts_and_modality(corpus, tiny_clip_dir, tmp_path):
    root = corpus["root"]
    index_dir = tmp_path / "idx"
    res = CliRunner().invoke(
        cli,
        [
            "index",
            "--texts",
            str(root / "captions.txt"),
            "--items",
            str(root / "items.jsonl"),
            "--index",
            str(index_dir),
            "--clip-model",
            str(tiny_clip_dir),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["indexed"] == 4 + 6
    res = CliRunner().invoke(
        cli,
        [
            "search",
            "--image",
            str(corpus["item_photos"][0]),
            "--modality",
            "text",
            "--index",
            str(index_dir),
            "--json",
        ],
    )
    rows = json.loads(res.stdout)
    assert rows and all(r["modality"] == "text" and "text" in r and "id" in r for r in rows)
    table = CliRunner().invoke(cli, ["search", CAPTIONS[0], "--index", str(index_dir), "-k", "3"])
    assert CAPTIONS[0] in table.stdout.splitlines()[1]
