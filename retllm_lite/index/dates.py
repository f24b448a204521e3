"""When an item was taken, and date-range filters over it (``retllm search``, ``retllm serve``).

Dates are local calendar dates, as a photo's clock shows them: the catalog's EXIF capture
time (``capture.py``) where it has one, else the file's modification time in local time,
marked ``source="mtime"``. A bound is a year (``2023``), a month (``2023-06``) or a day
(``2023-06-14``): ``after`` keeps items from the start of that period on (the period
included), ``before`` keeps items before its start (the period excluded), so
``--after 2023-06 --before 2023-09`` is June, July and August, and ``--after 2023-06-14
--before 2023-06-15`` is that one day.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BadInput
from .catalog import ItemRow

_BOUND = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")
DATE_FORMS = "use YYYY, YYYY-MM or YYYY-MM-DD"


def parse_date_bound(value: str, name: str) -> dt.datetime:
    """``2023``, ``2023-06`` or ``2023-06-14`` -> the first moment of that period (local, naive)."""
    m = _BOUND.match(value.strip())
    if not m:
        raise BadInput(f"{name}={value!r} is not a date", hint=DATE_FORMS)
    year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
    try:
        return dt.datetime(year, month, day)
    except ValueError as exc:
        raise BadInput(f"{name}={value!r} is not a date ({exc})", hint=DATE_FORMS) from None


@dataclass(frozen=True)
class ItemDate:
    when: dt.datetime
    source: str  # "exif" (the capture time in the photo) or "mtime" (the file's, as a fallback)
    camera: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """``date``, ``date_source`` and ``camera``, as hits and items carry them in JSON."""
        return {
            "date": self.when.isoformat(timespec="seconds"),
            "date_source": self.source,
            "camera": self.camera,
        }


NO_DATE: dict[str, str | None] = {"date": None, "date_source": None, "camera": None}


def item_date(row: ItemRow) -> ItemDate | None:
    """When an item was taken: its EXIF capture time, else its file's mtime (None: no file)."""
    if row.taken_source == "exif" and row.taken:
        try:
            return ItemDate(dt.datetime.fromisoformat(row.taken), "exif", row.camera)
        except ValueError:
            pass  # not written by this code: fall back
    if row.mtime_ns is None:
        return None
    return ItemDate(dt.datetime.fromtimestamp(row.mtime_ns / 1e9), "mtime", row.camera)


def date_filter(after: str | None = None, before: str | None = None) -> Callable[[ItemRow], bool] | None:
    """A row test keeping items dated in [after, before); None without bounds.

    Items without a date (captions) are left out by any bound.
    """
    lo = parse_date_bound(after, "after") if after else None
    hi = parse_date_bound(before, "before") if before else None
    if lo is not None and hi is not None and lo >= hi:
        raise BadInput(f"after={after} is not before before={before}", hint="swap the two dates")
    if lo is None and hi is None:
        return None

    def keep(row: ItemRow) -> bool:
        date = item_date(row)
        if date is None:
            return False
        return (lo is None or date.when >= lo) and (hi is None or date.when < hi)

    return keep
