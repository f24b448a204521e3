"""The web app's result filters: a date range and a folder, as ``Retriever.search(where=...)``.

Dates are local calendar dates, as a photo's clock shows them. A bound is a year
(``2023``), a month (``2023-06``) or a day (``2023-06-14``): ``after`` keeps items from
the start of that period on, ``before`` keeps items before its start, so
``after=2023-06&before=2023-09`` is June, July and August.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BadInput
from ..index.catalog import ItemRow

_BOUND = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")


def parse_date_bound(value: str, name: str) -> dt.datetime:
    """``2023``, ``2023-06`` or ``2023-06-14`` -> the first moment of that period (local, naive)."""
    m = _BOUND.match(value.strip())
    if not m:
        raise BadInput(f"{name}={value!r} is not a date", hint="use YYYY, YYYY-MM or YYYY-MM-DD")
    year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
    try:
        return dt.datetime(year, month, day)
    except ValueError as exc:
        raise BadInput(
            f"{name}={value!r} is not a date ({exc})", hint="use YYYY, YYYY-MM or YYYY-MM-DD"
        ) from None


@dataclass(frozen=True)
class ItemDate:
    when: dt.datetime
    source: str  # "mtime" here; "exif" once the catalog records capture times


def item_date(row: ItemRow) -> ItemDate | None:
    """When an item was taken, for the date filter and the item view.

    PLUG-IN POINT for the catalog's capture date (issue #13 item 5, the photos branch):
    this branch's catalog has no capture-date column yet, so this is the file's mtime
    (marked ``source="mtime"``). When the catalog records the EXIF capture time (falling
    back to mtime), return that here; everything else (the API's ``after``/``before``,
    the page's filter, the ``date`` field of hits and items) goes through this function.
    """
    if row.mtime_ns is None:
        return None
    return ItemDate(dt.datetime.fromtimestamp(row.mtime_ns / 1e9), "mtime")


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
    lo = parse_date_bound(after, "after") if after else None
    hi = parse_date_bound(before, "before") if before else None
    if lo is not None and hi is not None and lo >= hi:
        raise BadInput(f"after={after} is not before before={before}", hint="swap the two dates")
    prefix = folder_prefix(folder) if folder else None
    if lo is None and hi is None and prefix is None:
        return None

    def keep(row: ItemRow) -> bool:
        if prefix is not None and (row.path is None or not row.path.startswith(prefix)):
            return False
        if lo is None and hi is None:
            return True
        date = item_date(row)
        if date is None:
            return False
        return (lo is None or date.when >= lo) and (hi is None or date.when < hi)

    return keep
