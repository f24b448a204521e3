"""Dataset readers: Karpathy JSON, JSONL, caption folders; missing images counted and skipped."""

from __future__ import annotations

import json

import pytest

from eval_data import save_images, scenes, write_jsonl, write_karpathy
from retllm_lite.errors import BadInput
from retllm_lite.eval.datasets import detect_format, load_dataset


@pytest.fixture
def karpathy(tmp_path):
    """5 test images (one in a filepath subfolder, one missing, one with 6 captions) + 1 train."""
    items = scenes(6)
    images = tmp_path / "images"
    names = save_images(images, items)
    save_images(images / "val2014", items[:1], prefix="sub")
    (images / names[3]).unlink()  # missing
    caps = [s.captions for s in items]
    caps[2] = [f"caption {j}" for j in range(6)]
    splits = ["test", "test", "test", "test", "train", "test"]
    path = write_karpathy(tmp_path / "dataset_flickr30k.json", names, caps, splits)
    data = json.loads(path.read_text())
    data["images"][0]["filename"] = "sub000.jpg"
    data["images"][0]["filepath"] = "val2014"
    path.write_text(json.dumps(data))
    return path, images, items


def test_karpathy_test_split_five_captions_filepath_and_missing(karpathy):
    path, images, items = karpathy
    ds = load_dataset(path, images=images)
    assert ds.format == "karpathy" and ds.split == "test"
    assert [s.image.name for s in ds.samples] == ["sub000.jpg", "img001.jpg", "img002.jpg", "img005.jpg"]
    assert ds.samples[0].image == images / "val2014" / "sub000.jpg"
    assert ds.samples[1].captions == tuple(items[1].captions)
    assert ds.samples[2].captions == tuple(f"caption {j}" for j in range(5))  # the protocol's five
    assert ds.skipped_counts() == {"missing": 1}
    assert ds.skipped[0].path == str(images / "img003.jpg")
    assert ds.captions == [c for s in ds.samples for c in s.captions]
    assert ds.caption_owner == [0, 0, 1, 1, 2, 2, 2, 2, 2, 3, 3]
    d = ds.to_dict()
    assert d["images"] == 4 and d["captions"] == 11 and d["skipped"] == {"missing": 1}
    assert d["skipped_files"] == [{"path": str(images / "img003.jpg"), "reason": "missing"}]


def test_karpathy_split_all_limit_and_max_captions(karpathy):
    path, images, _ = karpathy
    ds = load_dataset(path, images=images, split="all", limit=2, max_captions=0)
    assert ds.available == 5 and ds.n_images == 2 and ds.limit == 2
    every = load_dataset(path, images=images, split="all", max_captions=0)
    assert len(every.samples[2].captions) == 6
    train = load_dataset(path, images=images, split="train")
    assert [s.image.name for s in train.samples] == ["img004.jpg"]


def test_karpathy_errors_name_the_file_and_what_to_do(karpathy, tmp_path):
    path, images, _ = karpathy
    with pytest.raises(BadInput, match="no images in split 'val'") as exc:
        load_dataset(path, images=images, split="val")
    assert "test, train" in str(exc.value)
    # Without --images the names resolve next to the JSON, where nothing is.
    with pytest.raises(BadInput, match="none of its 5 images were found") as exc:
        load_dataset(path)
    assert "--images" in str(exc.value) and str(path) in str(exc.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(BadInput, match=r"broken\.json: not valid JSON"):
        load_dataset(broken, format="karpathy")
    with pytest.raises(BadInput, match="no such images folder"):
        load_dataset(path, images=tmp_path / "nowhere")


def test_jsonl_relative_and_absolute_paths_caption_forms_and_missing(tmp_path):
    items = scenes(4)
    names = save_images(tmp_path / "data" / "pics", items)
    elsewhere = save_images(tmp_path / "other", items[:1], prefix="abs")
    path = tmp_path / "data" / "set.jsonl"
    lines = [
        json.dumps({"image": f"pics/{names[0]}", "captions": items[0].captions}),
        "",
        json.dumps({"image": str(tmp_path / "other" / elsewhere[0]), "caption": "just one", "id": "x"}),
        json.dumps({"image": "pics/gone.jpg", "captions": ["nothing here"]}),
        json.dumps({"image": f"pics/{names[2]}", "captions": ["  ", ""]}),
        json.dumps({"image": f"pics/{names[3]}", "captions": ["held out"], "split": "val"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    ds = load_dataset(path, split="test")
    assert ds.format == "jsonl"
    assert [s.image for s in ds.samples] == [
        tmp_path / "data" / "pics" / names[0],
        tmp_path / "other" / "abs000.jpg",
    ]
    assert ds.samples[1].captions == ("just one",) and ds.samples[1].id == "x"
    assert ds.skipped_counts() == {"missing": 1, "no captions": 1}
    assert len(load_dataset(path).samples) == 3  # no split asked: the 'val' line too


def test_jsonl_bad_lines_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "a.jpg", "captions": ["x"]}\n{"image": "b.jpg", "captions": [\n')
    with pytest.raises(BadInput, match=r"bad\.jsonl:2: not valid JSON"):
        load_dataset(path)
    write_jsonl(path, [{"captions": ["no image"]}])
    with pytest.raises(BadInput, match=r"bad\.jsonl:1: no 'image' path") as exc:
        load_dataset(path)
    assert '"captions"' in str(exc.value)  # says what a line must look like
    write_jsonl(path, [{"image": "a.jpg", "captions": "x"}, {"image": "b.jpg", "captions": [1]}])
    with pytest.raises(BadInput, match=r"bad\.jsonl:2: 'captions' must be a list of strings"):
        load_dataset(path)
    path.write_bytes(b'{"image": "\xff.jpg", "captions": ["x"]}\n')
    with pytest.raises(BadInput, match="not UTF-8"):
        load_dataset(path)


def test_json_list_reads_as_records(tmp_path):
    items = scenes(2)
    names = save_images(tmp_path, items)
    path = tmp_path / "records.json"
    path.write_text(
        json.dumps([{"image": n, "captions": s.captions} for n, s in zip(names, items, strict=True)])
    )
    assert detect_format(path) == "jsonl"
    ds = load_dataset(path)
    assert [s.captions for s in ds.samples] == [tuple(s.captions) for s in items]


def test_folder_txt_captions_orphans_and_uncaptioned(tmp_path):
    items = scenes(4)
    root = tmp_path / "set"
    names = save_images(root, items[:2]) + save_images(root / "sub", items[2:], prefix="deep")
    for folder, name, scene in [
        (root, names[0], items[0]),
        (root, names[1], items[1]),
        (root / "sub", names[2], items[2]),
    ]:
        (folder / name).with_suffix(".txt").write_text("\n".join(scene.captions) + "\n\n")
    (root / "orphan.txt").write_text("a caption without its image\n")
    (root / "notes.md").write_text("not part of the dataset")
    ds = load_dataset(root)
    assert ds.format == "folder"
    assert [s.image.relative_to(root).as_posix() for s in ds.samples] == [
        "img000.jpg",
        "img001.jpg",
        "sub/deep000.jpg",
    ]
    assert ds.samples[2].captions == tuple(items[2].captions) and ds.samples[2].id == "sub/deep000.jpg"
    assert ds.skipped_counts() == {"missing": 1, "no captions": 1}
    why = {s.reason: s.detail for s in ds.skipped}
    assert why["missing"] == "no image beside orphan.txt"
    assert why["no captions"] == "no deep001.txt beside it"


def test_format_detection_and_bad_paths(tmp_path):
    with pytest.raises(BadInput, match="no such dataset"):
        load_dataset(tmp_path / "absent.json")
    odd = tmp_path / "data.csv"
    odd.write_text("image,caption\n")
    with pytest.raises(BadInput, match="cannot tell the dataset format") as exc:
        load_dataset(odd)
    assert "--format" in str(exc.value)
    with pytest.raises(BadInput, match="is a folder"):
        load_dataset(tmp_path, format="jsonl")
    with pytest.raises(BadInput, match="needs a folder"):
        load_dataset(odd, format="folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="has no images"):
        load_dataset(empty)


def test_without_records_unreadable_images(tmp_path):
    items = scenes(3)
    names = save_images(tmp_path, items)
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"image": n, "captions": s.captions} for n, s in zip(names, items, strict=True)],
    )
    ds = load_dataset(path).without({1: "cannot decode image: truncated"})
    assert [s.image.name for s in ds.samples] == [names[0], names[2]]
    assert ds.skipped_counts() == {"unreadable": 1}
    assert ds.skipped[0].detail == "cannot decode image: truncated"
