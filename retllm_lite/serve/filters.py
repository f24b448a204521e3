"""The web app's result filters: a date range and a folder, as ``Retriever.search(where=...)``.

Dates are what ``retllm search --after/--before`` uses (``index/dates.py``): the catalog's
EXIF capture time, else the file's mtime (marked as such). A bound is a year (``2023``), a
month (``2023-06``) or a day (``2023-06-14``): ``after`` keeps items from the start of that
period on, ``before`` keeps items before its start, so ``after=2023-06&before=2023-09`` is
June, July and August.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import BadInput
from ..index.catalog import ItemRow
from ..index.dates import ItemDate, date_filter, item_date, parse_date_bound

__all__ = ["ItemDate", "folder_prefix", "item_date", "make_filter", "parse_date_bound"]


def folder_prefix(folder: str) -> bytes:
    """An absolute folder path as the catalog stores paths (raw bytes, trailing separator)."""
    if "\x00" in folder or not os.path.isabs(folder):
        raise BadInput(f"folder={folder!r} is not an absolute folder path", hint="pick one from /api/folders")
    raw = os.fsencode(os.path.normpath(folder))
    return raw if raw.endswith(b"/") else raw + b"/"


def make_filter(
    after: str | None = None, before: str | None = None, folder: str | None = None
) -> Callable[[ItemRow], bool] | None:
    """A row test for ``Retriever.search(where=...)``; None when nothing is filtered.

    With a date bound, items without a date (captions) are left out; with a folder, items
    without a file are.
    """
    dates = date_filter(after, before)
    prefix = folder_prefix(folder) if folder else None
    if dates is None and prefix is None:
        return None

    def keep(row: ItemRow) -> bool:
        if prefix is not None and (row.path is None or not row.path.startswith(prefix)):
            return False
        return dates is None or dates(row)

    return keep
