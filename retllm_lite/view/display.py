"""Showing untrusted strings (file names, captions) to a person.

File names are bytes on POSIX and reach us as ``os.fsdecode`` strings, so a name that
is not UTF-8 carries lone surrogates that cannot be written to a UTF-8 page or
terminal. Names can also hold control characters (newlines, ESC) that would break
a layout or drive a terminal. ``printable`` turns both into visible backslash
escapes, so what is shown is the name, never an instruction.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls; tab and newline are kept only when asked for.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: str | None, keep_newlines: bool = False) -> str:
    """``value`` as UTF-8-safe text with control characters shown as ``\\xNN``.

    Undecodable bytes of a file name (``surrogateescape``) appear as ``\\xNN`` too.
    """
    if value is None:
        return ""
    try:
        text = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that did not come from a file name
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    pattern = _CONTROL if keep_newlines else _CONTROL_ALL
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
