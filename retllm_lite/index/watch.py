"""Keep an index in step with folders as files appear, change, move or disappear.

One watcher for ``retllm index DIR --watch`` and ``retllm serve --watch DIR``. It runs the
ordinary incremental ``Indexer.index_folders`` once, then again after each burst of
file-system events (watchfiles: inotify, FSEvents, ReadDirectoryChangesW; polling with
``WATCHFILES_FORCE_POLLING=1``, e.g. on network shares). A burst is coalesced: events are
gathered until the folder has been quiet for ``quiet_ms``, then one sync handles them all.
Each sync re-scans the watched folders by (size, mtime), so only what changed is read;
moves are recognised by content as in any run.

Half-written files wait: a file whose mtime is less than ``settle`` seconds old is left
out of a sync (its old row, if any, is kept) and looked at again once it has settled, so
a photo copied or downloaded slowly is indexed once, complete. A file whose (size,
mtime) stays the same for ``settle`` seconds of watching is taken even if its mtime is in
the future (a wrong clock).

Stopping (Ctrl-C, SIGTERM, or ``stop`` set by ``retllm serve``): the sync in progress
stops at its next committed batch, so everything seen is either committed or left for
the next run exactly as ``retllm index`` leaves it; a second Ctrl-C stops at once (the
batch in flight is lost, as with ``retllm index``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from .indexer import Indexer, IndexReport

SETTLE_SECONDS = 2.0
QUIET_MS = 300


class _Stop(KeyboardInterrupt):
    """Raised from the indexer's progress callback to stop it right after a committed batch."""


class FolderWatcher:
    """Runs ``indexer.index_folders(roots)`` now and after every burst of changes, until stopped."""

    def __init__(
        self,
        indexer: Indexer,
        roots: Sequence[str | os.PathLike],
        on_report: Callable[[IndexReport], None] | None = None,
        stop: threading.Event | None = None,
        settle: float = SETTLE_SECONDS,
        quiet_ms: int = QUIET_MS,
    ):
        self.indexer = indexer
        self.roots = [os.path.abspath(os.fspath(r)) for r in roots]
        self.on_report = on_report or (lambda report: None)
        self.stop = stop or threading.Event()
        self.settle = settle
        self.quiet_ms = quiet_ms
        self.deferred: dict[bytes, tuple[int, float]] = {}  # path -> (mtime_ns, first seen unsettled)
        self._progress = indexer.progress
        indexer.progress = self._check_stop
        indexer.defer = self._unsettled

    # ---- what the indexer calls ---------------------------------------------------
    def _check_stop(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(stage, done, total)
        if self.stop.is_set():
            raise _Stop

    def _unsettled(self, path: bytes, mtime_ns: int) -> bool:
        """True for a file still being written: the indexer leaves it for a later sync."""
        now = time.time()
        if now - mtime_ns / 1e9 >= self.settle:
            self.deferred.pop(path, None)
            return False
        seen = self.deferred.get(path)
        if seen is not None and seen[0] == mtime_ns and now - seen[1] >= self.settle:
            del self.deferred[path]  # unchanged for `settle` seconds: a clock ahead, not a writer
            return False
        if seen is None or seen[0] != mtime_ns:
            self.deferred[path] = (mtime_ns, now)
        return True

    # ---- the loop -----------------------------------------------------------------
    def sync(self) -> IndexReport:
        report = self.indexer.index_folders(self.roots)
        self.on_report(report)
        return report

    def run(self) -> IndexReport | None:
        """Sync, then follow the folders until ``stop`` is set; returns an interrupted report, if any."""
        from watchfiles import watch

        report = self.sync()
        if report.interrupted:
            return report
        due: float | None = self._next_due()
        for changes in watch(
            *self.roots,
            watch_filter=None,
            debounce=max(self.quiet_ms * 10, 1600),
            step=self.quiet_ms,
            stop_event=self.stop,
            rust_timeout=max(200, int(self.settle * 500)),
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if self.stop.is_set():
                break
            if changes or (due is not None and time.monotonic() >= due):
                report = self.sync()
                if report.interrupted:
                    return report
                due = self._next_due()
        return None

    def _next_due(self) -> float | None:
        """When the files left out of the last sync should have settled (None: none were)."""
        return time.monotonic() + self.settle if self.deferred else None
