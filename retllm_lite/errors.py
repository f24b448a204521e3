"""Typed errors. The library raises these; the CLI turns them into one-line messages.

Every message says what happened and, where there is one, what to do about it.
"""

from __future__ import annotations


class RetllmError(Exception):
    """Base class: a problem the user can act on (not a bug)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ModelNotFound(RetllmError):
    """No model at the given name or path."""


class BadModelFile(RetllmError):
    """A model file exists but cannot be used (truncated, wrong kind, checksum mismatch)."""


class ChecksumMismatch(BadModelFile):
    """A downloaded file does not match the checksum the hub reports for it (it was deleted)."""


class HubUnreachable(RetllmError):
    """A model must be downloaded but the hub cannot be reached, or downloads are turned off."""


class MissingDependency(RetllmError):
    """An optional package (an extra) is needed for this command."""


class IndexNotFound(RetllmError):
    """No index at the given location."""


class IndexLocked(RetllmError):
    """Another process is writing to the index."""


class EncoderMismatch(RetllmError):
    """The encoder asked for is not the one that built the index."""


class IndexCorrupt(RetllmError):
    """The index files cannot be read."""


class IndexWriteError(RetllmError):
    """The index cannot be written (read-only location, disk full); nothing was lost."""


class BadInput(RetllmError):
    """A query, dataset or input file that cannot be used."""


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise MissingDependency naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{purpose} needs the Python package '{module.split('.')[0]}' ({exc})",
            hint=f"install it with: pip install 'retllm-lite[{extra}]'",
        ) from exc
