"""Pillow's warnings about one image, kept with that image instead of printed.

Pillow reports odd but readable files through ``warnings.warn`` (corrupt EXIF data, ...).
Printed, they land between ``retllm index``'s progress lines, from whichever worker thread
decoded the file, and do not say which file. ``recorded()`` collects, as one-line messages,
the warnings raised in the calling thread while it is active, each time they happen (not
once per code location, as Python's default filter would for Pillow), so the caller can
attach them to the image they concern.

``warnings.catch_warnings`` cannot do this from worker threads: it swaps process-wide state,
so threads using it at the same time restore each other's settings and see each other's
warnings. Here the first thread to enter installs one hook (under a lock) and the last to
leave removes it; each thread's messages go to its own list, and warnings raised by threads
outside ``recorded()`` are shown as before.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

_MAX_CHARS = 300

_lock = threading.Lock()
_local = threading.local()
_users = 0
_saved: warnings.catch_warnings | None = None
_show_before = warnings.showwarning


class _Sink:
    def __init__(self, raise_for: tuple[type[Warning], ...]):
        self.messages: list[str] = []
        self.raise_for = raise_for


def _route(message, category, filename, lineno, file=None, line=None) -> None:
    sink: _Sink | None = getattr(_local, "sink", None)
    if sink is None:
        _show_before(message, category, filename, lineno, file, line)
        return
    if sink.raise_for and issubclass(category, sink.raise_for):
        raise message if isinstance(message, Warning) else category(message)
    text = " ".join(str(message).split())
    sink.messages.append(f"{category.__name__}: {text}"[:_MAX_CHARS])


def _install() -> None:
    global _users, _saved, _show_before
    with _lock:
        if _users == 0:
            _saved = warnings.catch_warnings()
            _saved.__enter__()
            _show_before = warnings.showwarning
            # every time, not once per location: each image gets its own messages
            warnings.filterwarnings("always", module=r"PIL\b")
            warnings.showwarning = _route
        _users += 1


def _uninstall() -> None:
    global _users, _saved
    with _lock:
        _users -= 1
        if _users == 0 and _saved is not None:
            _saved.__exit__(None, None, None)
            _saved = None


@contextlib.contextmanager
def recorded(raise_for: tuple[type[Warning], ...] = ()) -> Iterator[list[str]]:
    """``with recorded() as messages:`` this thread's warnings go to ``messages``, not stderr.

    Warnings of the ``raise_for`` categories are raised as exceptions instead.
    """
    _install()
    previous = getattr(_local, "sink", None)
    sink = _Sink(raise_for)
    _local.sink = sink
    try:
        yield sink.messages
    finally:
        _local.sink = previous
        _uninstall()
