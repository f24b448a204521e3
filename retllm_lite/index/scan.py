"""Walk photo folders: every image file with its size and mtime, and every path skipped.

Symlinks are followed (to files and folders) with a guard against loops; hidden
entries (".name") are skipped unless asked for. Nothing here raises for a bad entry:
unreadable folders, loops and dangling links are reported as ``Skipped`` with a
one-line reason. So are the files beside photos that are not photos (sidecars, the
video of a Live Photo) and photos whose decoder is not installed (HEIC without
pillow-heif, RAW without rawpy: the reason says what to install; see
``encode/formats.py``). Paths are raw bytes so any file name survives.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..encode import formats

IMAGE_EXTENSIONS = formats.IMAGE_EXTENSIONS


@dataclass(frozen=True)
class FileEntry:
    path: bytes  # absolute
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    path: bytes
    reason: str


def is_image_name(name: bytes) -> bool:
    return os.path.splitext(name)[1].lower().decode("ascii", "replace") in IMAGE_EXTENSIONS


def _not_a_photo(name: bytes, stills: set[bytes]) -> str | None:
    """Why a file beside photos is skipped: a sidecar or a Live Photo's video (None: not one of those)."""
    ext = formats.extension(name)
    if ext in formats.SIDECAR_EXTENSIONS:
        return f"sidecar file ({ext[1:].upper()} metadata), not a photo"
    if ext in formats.LIVE_PHOTO_VIDEO_EXTENSIONS and os.path.splitext(name)[0].lower() in stills:
        return "Live Photo video (its photo beside it is indexed): videos are not indexed"
    return None


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "vanished or dangling symlink"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENAMETOOLONG:
        return "path too long"
    return exc.strerror or type(exc).__name__


def scan(root: str | bytes | os.PathLike, hidden: bool = False) -> Iterator[FileEntry | Skipped]:
    """Yield image files under ``root`` (a folder, or a single image file)."""
    root_b = os.path.abspath(os.fsencode(root))
    try:
        st = os.stat(root_b)
    except OSError as exc:
        yield Skipped(root_b, _reason(exc))
        return
    if stat.S_ISREG(st.st_mode):
        if is_image_name(root_b):
            missing = formats.missing_decoder(root_b)
            yield Skipped(root_b, missing) if missing else FileEntry(root_b, st.st_size, st.st_mtime_ns)
        return
    seen_dirs: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    stack = [root_b]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(folder, _reason(exc))
            continue
        subdirs = []
        # Live Photo stills by lower-cased stem: their videos beside them are skipped, with why
        stills = {
            os.path.splitext(e.name)[0].lower()
            for e in entries
            if formats.extension(e.name) in formats.LIVE_PHOTO_STILL_EXTENSIONS
        }
        for entry in entries:
            name = entry.name
            if not hidden and name.startswith(b"."):
                continue
            path = entry.path
            try:
                est = entry.stat(follow_symlinks=True)
            except OSError as exc:
                # report what could matter (links, folders, images); ignore other files
                if entry.is_symlink() or entry.is_dir(follow_symlinks=False) or is_image_name(name):
                    yield Skipped(path, _reason(exc))
                continue
            if stat.S_ISDIR(est.st_mode):
                key = (est.st_dev, est.st_ino)
                if key in seen_dirs:
                    if entry.is_symlink():
                        yield Skipped(path, "symlink to a folder already scanned (loop or alias)")
                    continue
                seen_dirs.add(key)
                subdirs.append(path)
            elif stat.S_ISREG(est.st_mode) and is_image_name(name):
                missing = formats.missing_decoder(name)
                yield Skipped(path, missing) if missing else FileEntry(path, est.st_size, est.st_mtime_ns)
            elif stat.S_ISREG(est.st_mode):
                why = _not_a_photo(name, stills)
                if why is not None:
                    yield Skipped(path, why)
        stack.extend(reversed(subdirs))


@dataclass
class RootChanges:
    """One root scanned against what an index records: the files to (re)process, the rest."""

    todo: list[FileEntry] = field(default_factory=list)
    skipped: list[tuple[bytes, str]] = field(default_factory=list)  # (path, reason)
    scanned: int = 0
    unchanged: int = 0


def scan_changes(
    root: bytes,
    seen: set[bytes],
    recorded: Callable[[bytes], tuple[int, int, str] | None],
    hidden: bool = False,
    retry_errors: bool = False,
    defer: Callable[[bytes, int], bool] | None = None,
) -> RootChanges:
    """Scan ``root`` and sort what it holds against an index, for one indexing run.

    ``recorded(path)`` is the index's (size, mtime_ns, status) of a path, or None. A file
    whose size and mtime match is unchanged (unless its status is an error and
    ``retry_errors``); any other is to do. Paths already in ``seen`` (found under an
    earlier root of the run) are passed over; the others are added to it. A file for which
    ``defer(path, mtime_ns)`` is true is left out of this run (still being written: a later
    run takes it).
    """
    out = RootChanges()
    for found in scan(root, hidden=hidden):
        if isinstance(found, Skipped):
            out.skipped.append((found.path, found.reason))
            continue
        if found.path in seen:
            continue
        seen.add(found.path)
        if defer is not None and defer(found.path, found.mtime_ns):
            continue
        out.scanned += 1
        row = recorded(found.path)
        if (
            row is not None
            and row[0] == found.size
            and row[1] == found.mtime_ns
            and (row[2] == "ok" or not retry_errors)
        ):
            out.unchanged += 1
        else:
            out.todo.append(found)
    return out


def source_of(path: bytes, roots: list[bytes]) -> str:
    """The root of this run that ``path`` was found under, as text (else the file's folder)."""
    for root in roots:
        if path == root or path.startswith(root.rstrip(b"/") + b"/"):
            return os.fsdecode(root)
    return os.fsdecode(os.path.dirname(path))
