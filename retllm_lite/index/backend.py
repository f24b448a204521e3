"""The vector-store seam: what search and the CLI need from an index, and the one factory.

Two implementations:

- ``Index`` (``store.py``): a local folder, SQLite catalog + hnswlib snapshot. The default;
  ``--index PATH`` selects it.
- ``LanceIndex`` (``lance_store.py``): a LanceDB dataset in a local folder or on object
  storage; ``--index lance:URI`` selects it (``lance:/data/idx``, ``lance:s3://bucket/prefix``).

Search (``Retriever``), ``retllm search``, ``retllm info`` and ``retllm doctor`` only use
``SearchIndex``, so the rerank stage runs unchanged on either. Writing differs: the local index
has its ``Indexer`` (``indexer.py``); a LanceDB index has ``LanceIndexer`` (``lance_indexer.py``),
which can also embed on Ray Data. ``make_indexer`` picks the right one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from ..encode.base import EncoderInfo
from .catalog import ItemRow

LANCE_PREFIX = "lance:"


@runtime_checkable
class SearchIndex(Protocol):
    """An index a ``Retriever`` can search, whichever store holds it."""

    @property
    def location(self) -> str:
        """Where it is, for messages (a folder, or ``lance:URI``)."""

    @property
    def writable(self) -> bool: ...

    def encoder_info(self) -> EncoderInfo | None:
        """The encoder that built it (None: nothing indexed yet)."""

    def check_encoder(self, info: EncoderInfo) -> None:
        """Raise EncoderMismatch unless ``info`` is the encoder that built it."""

    def set_encoder(self, info: EncoderInfo) -> None:
        """Writer side: record the encoder (after ``check_encoder``)."""

    def pixels_outdated(self) -> bool:
        """True if image vectors may predate the current way files become pixels."""

    def search(
        self, query: np.ndarray, k: int = 10, where: Callable[[ItemRow], bool] | None = None
    ) -> list[tuple[ItemRow, float]]:
        """The k items nearest to a unit query vector (cosine), best first; ``where`` filters rows."""

    def stats(self) -> dict:
        """What ``retllm info`` prints: path, item counts, bytes, encoder, ANN state."""

    def errors(self) -> Iterator[tuple[str, str]]:
        """(path, reason) of every file that could not be indexed and every path skipped."""

    def warnings(self) -> Iterator[tuple[str, str]]:
        """(path, warning) of indexed files the decoder warned about."""

    def close(self) -> None: ...

    def __enter__(self) -> SearchIndex: ...

    def __exit__(self, *exc) -> None: ...


def is_lance(spec: str | os.PathLike | None) -> bool:
    return spec is not None and os.fspath(spec).startswith(LANCE_PREFIX)


def lance_uri(spec: str | os.PathLike) -> str:
    """``lance:URI`` -> URI (a local folder made absolute; ``s3://``, ``gs://``, ``az://`` kept)."""
    uri = os.fspath(spec)[len(LANCE_PREFIX) :]
    if not uri:
        from ..errors import BadInput

        raise BadInput(
            "--index lance: needs a URI", hint="e.g. --index lance:/data/idx or lance:s3://bucket/idx"
        )
    if "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def open_index(spec: str | os.PathLike | None = None, writable: bool = False, wait: float = 0.0, **kwargs):
    """Open the index ``spec`` names: ``lance:URI`` for LanceDB, else a local folder (default: XDG)."""
    if is_lance(spec):
        from .lance_store import LanceIndex

        return LanceIndex.open(lance_uri(spec), writable=writable, wait=wait, **kwargs)
    from .store import Index

    return Index.open(spec, writable=writable, wait=wait, **kwargs)


def make_indexer(index, encoder, ray=None, **kwargs):
    """The indexer for ``index``'s store; ``ray`` (``RayOptions``) embeds on Ray Data (LanceDB only)."""
    from .lance_store import LanceIndex

    if isinstance(index, LanceIndex):
        from .lance_indexer import LanceIndexer

        return LanceIndexer(index, encoder, ray=ray, **kwargs)
    if ray is not None:
        from ..errors import BadInput

        raise BadInput(
            "--ray writes into a LanceDB index",
            hint="pass --index lance:FOLDER (or lance:s3://bucket/prefix) with --ray",
        )
    from .indexer import Indexer

    return Indexer(index, encoder, **kwargs)
