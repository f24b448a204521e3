"""Image-caption datasets in the formats retrieval benchmarks ship in.

* ``karpathy``: the Karpathy-split JSON of Flickr30k / COCO (``dataset_flickr30k.json``):
  ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``. It holds
  file names only: images are looked up as ``ROOT/filepath/filename``, then
  ``ROOT/filename``, with ROOT the ``images`` folder (default: the JSON's folder). The
  split defaults to ``test`` and each image keeps its first five captions, as the
  standard 1K (Flickr30k) / 5K (COCO) protocol does.
* ``jsonl``: one ``{"image": path, "captions": [...]}`` a line (``"caption": "..."`` also
  works; optional ``"id"`` and ``"split"``). A ``.json`` file holding a list of such
  objects reads the same way.
* ``folder``: images with a same-named ``.txt`` beside them, one caption a line
  (``beach.jpg`` + ``beach.txt``), in the folder and its subfolders.

Relative image paths resolve against ROOT. Images that are missing, have no caption or
(found later, by the runner) cannot be decoded are reported, counted and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retllm_lite.errors import BadInput

FORMATS = ("karpathy", "jsonl", "folder")
KARPATHY_SPLIT = "test"
KARPATHY_CAPTIONS = 5  # the standard protocol: five captions per image
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
JSONL_HINT = 'each line must be an object like {"image": "a.jpg", "captions": ["...", "..."]}'


@dataclass(frozen=True)
class Sample:
    """One image and its captions."""

    image: Path
    captions: tuple[str, ...]
    id: str


@dataclass(frozen=True)
class Skipped:
    """An image left out, and why: ``missing``, ``no captions`` or ``unreadable``."""

    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Dataset:
    """The samples to evaluate, with what was left out and how they were chosen."""

    source: Path
    format: str
    split: str | None
    images_root: Path
    samples: tuple[Sample, ...]
    skipped: tuple[Skipped, ...] = ()
    available: int = 0  # usable samples before --limit
    limit: int | None = None

    @property
    def n_images(self) -> int:
        return len(self.samples)

    @property
    def captions(self) -> list[str]:
        """Every caption, sample by sample."""
        return [c for s in self.samples for c in s.captions]

    @property
    def caption_owner(self) -> list[int]:
        """For each caption (as in ``captions``), the index of its image."""
        return [i for i, s in enumerate(self.samples) for _ in s.captions]

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def without(self, drop: dict[int, str], reason: str = "unreadable") -> Dataset:
        """A copy without the samples at the given indices (index -> detail), recorded as skipped."""
        if not drop:
            return self
        kept = tuple(s for i, s in enumerate(self.samples) if i not in drop)
        gone = tuple(Skipped(str(self.samples[i].image), reason, d) for i, d in sorted(drop.items()))
        return replace(self, samples=kept, skipped=self.skipped + gone)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.source),
            "format": self.format,
            "split": self.split,
            "images_root": str(self.images_root),
            "images": self.n_images,
            "captions": len(self.captions),
            "available": self.available,
            "limit": self.limit,
            "skipped": self.skipped_counts(),
            "skipped_files": [
                {"path": s.path, "reason": s.reason, **({"detail": s.detail} if s.detail else {})}
                for s in self.skipped
            ],
        }


@dataclass
class _Record:
    image: Path
    captions: list[str]
    id: str
    split: str | None = None
    note: str = field(default="")  # why it is already known to be unusable


def detect_format(path: Path) -> str:
    """``folder`` for a directory, ``jsonl`` for .jsonl, else by the JSON's shape."""
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    if path.suffix.lower() == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return "karpathy"
        if isinstance(data, list):
            return "jsonl"
    raise BadInput(
        f"{path}: cannot tell the dataset format",
        hint="pass --format karpathy, jsonl or folder",
    )


def load_dataset(
    path: str | Path,
    *,
    format: str = "auto",
    split: str | None = None,
    images: str | Path | None = None,
    limit: int | None = None,
    max_captions: int | None = None,
) -> Dataset:
    """Read a dataset; see the module doc for the formats.

    ``split``: Karpathy JSON default ``test`` (``all`` = every split); other formats filter
    only records that carry a ``split``. ``images``: the folder relative image paths
    resolve against (default: the dataset file's folder). ``limit``: keep the first N
    usable images (0 or None: all). ``max_captions``: captions kept per image (default 5
    for Karpathy JSON, else all; 0 = all).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise BadInput(f"{source}: no such dataset file or folder")
    fmt = detect_format(source) if format == "auto" else format
    if fmt not in FORMATS:
        raise BadInput(f"unknown dataset format {format!r}", hint=f"use auto, {', '.join(FORMATS)}")
    if fmt == "folder" and not source.is_dir():
        raise BadInput(f"{source}: the folder format needs a folder of images and .txt captions")
    if fmt != "folder" and source.is_dir():
        raise BadInput(f"{source} is a folder", hint="pass the dataset file, or --format folder")
    root = Path(images).expanduser() if images is not None else (source if source.is_dir() else source.parent)
    if images is not None and not root.is_dir():
        raise BadInput(f"{root}: no such images folder", hint="pass the folder holding the images")
    if fmt == "karpathy":
        split = split or KARPATHY_SPLIT
        max_captions = KARPATHY_CAPTIONS if max_captions is None else max_captions
        records = list(_karpathy(source, root))
    elif fmt == "jsonl":
        records = list(_jsonl(source, root))
    else:
        records = list(_folder(source))
    chosen = _select_split(records, split, source, fmt)
    samples, skipped = _check(chosen, max_captions or None)
    if not samples:
        raise BadInput(*_nothing_usable(source, chosen, skipped, root, fmt))
    n = len(samples)
    if limit:
        samples = samples[:limit]
    return Dataset(
        source=source,
        format=fmt,
        split=split,
        images_root=root,
        samples=tuple(samples),
        skipped=tuple(skipped),
        available=n,
        limit=limit or None,
    )


# -- readers ----------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc.reason})", hint="save the dataset as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the dataset ({exc.strerror})") from None


def _resolve(root: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


def _karpathy(source: Path, root: Path) -> Iterator[_Record]:
    data = _read_json(source)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise BadInput(
            f"{source}: not a Karpathy-split JSON (no top-level 'images' list)",
            hint="pass --format jsonl or folder for other layouts",
        )
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise BadInput(f"{source}: images[{n}] has no 'filename'", hint="is this a Karpathy-split JSON?")
        sentences = entry.get("sentences") or []
        if not isinstance(sentences, list):
            raise BadInput(f"{source}: images[{n}] 'sentences' is not a list")
        captions = [_sentence(s) for s in sentences]
        name = entry["filename"]
        sub = entry.get("filepath")
        image = _resolve(root, f"{sub}/{name}" if isinstance(sub, str) and sub else name)
        if not image.is_file() and (root / name).is_file():
            image = root / name
        ident = entry.get("imgid", entry.get("cocoid", name))
        yield _Record(image, captions, str(ident), split=entry.get("split"))


def _sentence(s: Any) -> str:
    if isinstance(s, str):
        return s
    if isinstance(s, dict):
        if isinstance(s.get("raw"), str):
            return s["raw"]
        if isinstance(s.get("tokens"), list):
            return " ".join(str(t) for t in s["tokens"])
    return ""


def _jsonl(source: Path, root: Path) -> Iterator[_Record]:
    if source.suffix.lower() == ".json":
        data = _read_json(source)
        if not isinstance(data, list):
            raise BadInput(f"{source}: expected a JSON list of records", hint=JSONL_HINT)
        for n, obj in enumerate(data):
            yield _jsonl_record(obj, f"{source}: item {n}", root, str(n))
        return
    try:
        with source.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{source}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadInput(f"{where}: not valid JSON ({exc.msg})", hint=JSONL_HINT) from None
                yield _jsonl_record(obj, where, root, str(lineno))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{source}: not UTF-8 text ({exc.reason})", hint="save the dataset as UTF-8") from None
    except OSError as exc:
        raise BadInput(f"{source}: cannot read the dataset ({exc.strerror})") from None


def _jsonl_record(obj: Any, where: str, root: Path, default_id: str) -> _Record:
    if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
        raise BadInput(f"{where}: no 'image' path", hint=JSONL_HINT)
    caps = obj.get("captions", obj.get("caption"))
    if isinstance(caps, str):
        caps = [caps]
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise BadInput(f"{where}: 'captions' must be a list of strings", hint=JSONL_HINT)
    split = obj.get("split")
    return _Record(
        _resolve(root, obj["image"]),
        caps,
        str(obj.get("id", default_id)),
        split=split if isinstance(split, str) else None,
    )


def _folder(source: Path) -> Iterator[_Record]:
    files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    stems = {p.with_suffix("") for p in images}
    for txt in (p for p in files if p.suffix.lower() == ".txt"):
        if txt.with_suffix("") not in stems:
            yield _Record(txt.with_suffix(""), [], _rel(txt, source), note=f"no image beside {txt.name}")
    for img in images:
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            yield _Record(img, [], _rel(img, source), note=f"no {txt.name} beside it")
            continue
        try:
            lines = txt.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise BadInput(f"{txt}: not UTF-8 text ({exc.reason})", hint="save captions as UTF-8") from None
        except OSError as exc:
            raise BadInput(f"{txt}: cannot read the captions ({exc.strerror})") from None
        yield _Record(img, lines, _rel(img, source))


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


# -- selection --------------------------------------------------------------------------


def _select_split(records: list[_Record], split: str | None, source: Path, fmt: str) -> list[_Record]:
    if not split or split == "all":
        return records
    if fmt == "karpathy":
        chosen = [r for r in records if r.split == split]
        if records and not chosen:
            found = sorted({str(r.split) for r in records})
            raise BadInput(
                f"{source}: no images in split {split!r}",
                hint=f"splits in the file: {', '.join(found)}; pass --split NAME or --split all",
            )
        return chosen
    return [r for r in records if r.split is None or r.split == split]


def _check(records: list[_Record], max_captions: int | None) -> tuple[list[Sample], list[Skipped]]:
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for r in records:
        captions = [c.strip() for c in r.captions if c and c.strip()][:max_captions]
        if r.note.startswith("no image"):
            skipped.append(Skipped(str(r.image), "missing", r.note))
        elif not r.image.is_file():
            skipped.append(Skipped(str(r.image), "missing"))
        elif not captions:
            skipped.append(Skipped(str(r.image), "no captions", r.note))
        else:
            samples.append(Sample(r.image, tuple(captions), r.id))
    return samples, skipped


def _nothing_usable(
    source: Path, chosen: list[_Record], skipped: list[Skipped], root: Path, fmt: str
) -> tuple[str, str]:
    if not chosen:
        return f"{source}: the dataset has no images", "check the file, or pass --format"
    missing = sum(s.reason == "missing" for s in skipped)
    if missing == len(chosen):
        where = "--images DIR, the folder holding them" if fmt != "folder" else "a folder of images"
        return (
            f"{source}: none of its {len(chosen)} images were found under {root} (e.g. {skipped[0].path})",
            f"pass {where}" + (" (e.g. flickr30k-images)" if fmt == "karpathy" else ""),
        )
    return (
        f"{source}: no image has a caption",
        "captions go in 'sentences' (Karpathy), 'captions' (JSONL) or NAME.txt (folder)",
    )
