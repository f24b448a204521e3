"""The seam between ``Scorer`` and a model: what a fine-stage backend implements.

A backend turns a query and its candidates into answer probabilities, one forward pass
per pair (``answer_probs``, with the image repeated when ``enhanced``); ``Scorer`` does the
rest (gating, the ranking rule). Optional steps: ``pick_caption`` (listwise image ->
captions), ``render`` (the exact prompt, for ``--explain``) and ``close``.

``BACKENDS`` maps a model directory's manifest ``format`` to the backend that loads it,
as ``ENCODERS`` does for CLIP encoders: another runtime (a llama-server client, a
transformers model) is one new module and one entry here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from retllm_lite.errors import BadModelFile, ModelNotFound

if TYPE_CHECKING:
    from retllm_lite.rerank.gating import Enhance
    from retllm_lite.rerank.logits import AnswerProbs
    from retllm_lite.rerank.pairs import Item, PairScore


class PairBackend(Protocol):
    """A fine-stage backend: answer probabilities for rendered (query, candidate) pairs."""

    def answer_probs(
        self, query: Item, candidates: Sequence[Item], *, enhanced: bool
    ) -> list[AnswerProbs]: ...


class PairScorer(Protocol):
    """A backend that applies a gating mode itself (``LlamaMtmdScorer.score_pairs`` does, via ``gating``)."""

    def score_pairs(
        self, query: Item, candidates: Sequence[Item], *, enhance: Enhance | str = "off"
    ) -> list[PairScore]: ...


def _llama_mtmd(directory: Path, verify: bool, **kwargs: Any) -> Any:
    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
    from retllm_lite.rerank.manifest import read_manifest

    files = read_manifest(directory, verify=verify)
    return LlamaMtmdScorer(files.model, files.mmproj, **kwargs)


# manifest "format" -> loader(directory, verify, **backend options)
BACKENDS: dict[str, Callable[..., Any]] = {"retllm-lite/vlm-gguf": _llama_mtmd}


def register_backend(fmt: str, loader: Callable[..., Any] | str) -> None:
    """Add a backend for manifests of format ``fmt`` (a loader or "module:function")."""
    if isinstance(loader, str):
        module, _, attr = loader.partition(":")

        def lazy(directory: Path, verify: bool, **kwargs: Any) -> Any:
            return getattr(import_module(module), attr)(directory, verify, **kwargs)

        BACKENDS[fmt] = lazy
    else:
        BACKENDS[fmt] = loader


def load_backend(directory: str | Path, *, verify: bool = True, **kwargs: Any) -> Any:
    """The backend for a model directory, chosen by its manifest's ``format``."""
    directory = Path(directory).expanduser()
    path = directory / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelNotFound(
            f"{directory}: no manifest.json (not a retllm VLM directory)",
            hint="create one with 'retllm quantize vlm' or 'retllm models pull NAME'",
        ) from None
    except (OSError, ValueError) as exc:
        raise BadModelFile(
            f"{path}: unreadable manifest ({exc})", hint="convert or pull the model again"
        ) from None
    fmt = data.get("format") if isinstance(data, dict) else None
    loader = BACKENDS.get(str(fmt))
    if loader is None:
        raise BadModelFile(
            f"{path}: no fine-stage backend for format {fmt!r}",
            hint=f"known formats: {', '.join(BACKENDS)}",
        )
    return loader(directory, verify, **kwargs)
