"""Reading text and image+text collections: what ``retllm index --texts/--items`` indexes.

Formats:

- ``.txt``: one caption a line; the item id is the line number (1-based); blank lines skipped.
- ``.jsonl`` (``--texts``): ``{"id": ..., "text": ...}`` a line.
- ``.jsonl`` (``--items``): ``{"id": ..., "image": path, "text": ...}`` a line; ``image`` or
  ``text`` may be missing (then the item is text-only or image-only). Relative image
  paths are resolved against the collection file's folder.

Problems with a line (bad JSON, no id, duplicate id, no text and no image) are reported
per line and never stop the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput


@dataclass(frozen=True)
class CollectionItem:
    item_id: str
    text: str | None
    image: bytes | None  # absolute path, raw bytes
    line: int

    @property
    def modality(self) -> str:
        if self.image is not None and self.text is not None:
            return "image+text"
        return "image" if self.image is not None else "text"


@dataclass(frozen=True)
class LineProblem:
    line: int
    reason: str


def _resolve(base: Path, image: str) -> bytes:
    p = Path(os.path.expanduser(image))
    if not p.is_absolute():
        p = base / p
    return os.path.abspath(os.fsencode(p))


def read_collection(path: str | os.PathLike, kind: str) -> Iterator[CollectionItem | LineProblem]:
    """Items of a ``--texts`` (kind "texts") or ``--items`` (kind "items") file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the collection ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc})", hint="save the file as UTF-8") from None
    base = path.resolve().parent
    seen: set[str] = set()
    as_lines = kind == "texts" and path.suffix.lower() != ".jsonl"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if as_lines:
            item = CollectionItem(str(number), line.strip(), None, number)
        else:
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield LineProblem(number, f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                yield LineProblem(number, "not a JSON object")
                continue
            item_id = obj.get("id")
            if item_id is None or isinstance(item_id, (dict, list)):
                yield LineProblem(number, 'missing or invalid "id"')
                continue
            caption = obj.get("text")
            if caption is not None and not isinstance(caption, str):
                yield LineProblem(number, '"text" is not a string')
                continue
            image = obj.get("image") if kind == "items" else None
            if image is not None and not isinstance(image, str):
                yield LineProblem(number, '"image" is not a path string')
                continue
            if kind == "texts" and not caption:
                yield LineProblem(number, 'missing "text"')
                continue
            if not caption and not image:
                yield LineProblem(number, 'neither "text" nor "image"')
                continue
            item = CollectionItem(
                str(item_id), caption or None, _resolve(base, image) if image else None, number
            )
        if item.item_id in seen:
            yield LineProblem(number, f"duplicate id {item.item_id!r}")
            continue
        seen.add(item.item_id)
        yield item


def item_key(source: str, item_id: str) -> bytes:
    """Catalog key of a collection item (image files use their path; these never start with '/')."""
    return b"item:" + os.fsencode(source) + b"#" + item_id.encode("utf-8", "surrogateescape")
