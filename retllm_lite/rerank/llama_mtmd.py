"""RetLLM's fine stage on llama.cpp: P("True") for a yes/no match question, per pair.

``LlamaMtmdScorer`` implements ``PairScorer`` with a GGUF vision-language model and its
mmproj through llama-cpp-python's low-level and mtmd bindings:

1. The pair is rendered with the pairing's template (``prompts``) into one user message,
   images as mtmd media markers, then through the model's own chat template
   (``llama_model_chat_template``) with the generation prompt appended.
2. The prompt is tokenised by mtmd (text / image chunks) and evaluated; the logits at the
   last position give P("True"), P("False") (softmax over the full vocabulary) and the
   normalised top-10 entropy.
3. Visual enhancement inserts the candidate's image (the query's when only the query has
   one) a second time after the question: ``always``, or ``gated`` = only when the first
   pass's entropy exceeds the threshold (0.75 in the paper).

Two evaluation paths:

* naive (``fast=False``): every pair is a fresh prompt; each image is encoded every time.
* fast (default): each image is encoded once (embeddings kept in memory and optionally on
  disk, ``embedding_cache``); prompts are tokenised with placeholder bitmaps; the chunks
  all candidates share (chat header, query text, the query's image) are evaluated once on
  sequence 0 and kept for the next call; each candidate copies them
  (``llama_memory_seq_cp``) onto its own sequence and evaluates only its own chunks.
  With ``batch_size`` 1 (default) the candidates run one after another and the scores are
  bit-identical to the naive path. With ``batch_size`` k > 1, the final text chunks of k
  candidates go through one batched ``llama_decode`` (one KV stream per sequence): faster
  on big models, equal to the naive path up to float rounding (see docs/rerank.md).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from retllm_lite.errors import BadInput, BadModelFile
from retllm_lite.integrity import file_sha256
from retllm_lite.rerank.chat_template import ChatFormat
from retllm_lite.rerank.early_exit import ExitLayers, LayerCapture, OutputHead, exit_entropies
from retllm_lite.rerank.embedding_cache import EmbeddingCache, cache_namespace
from retllm_lite.rerank.gating import Enhance, gate
from retllm_lite.rerank.images import RGBImage, load_rgb
from retllm_lite.rerank.llama_runtime import CHUNK_IMAGE, Chunk, Chunks, LlamaRuntime
from retllm_lite.rerank.logits import AnswerProbs, ChoiceProbs, answer_probs, choice_probs
from retllm_lite.rerank.pairs import Item, PairScore
from retllm_lite.rerank.prompts import (
    ANSWER_FALSE,
    ANSWER_TRUE,
    LISTWISE_TEMPLATE,
    Modality,
    PromptPart,
    PromptTemplate,
    Slot,
    default_template,
    enhance_side,
    modality,
    render_listwise,
)
from retllm_lite.rerank.state_cache import StateCache, head_key

ListwisePick = ChoiceProbs
Templates = PromptTemplate | Mapping[tuple[Modality, Modality], PromptTemplate] | None


@dataclass
class ScorerStats:
    """Counters, for tests and benchmarks: what the fast path saved."""

    images_encoded: int = 0
    embedding_memory_hits: int = 0
    embedding_disk_hits: int = 0
    prompts_scored: int = 0
    prefix_units_evaluated: int = 0
    prefix_units_reused: int = 0
    states_saved: int = 0
    states_restored: int = 0


@dataclass(frozen=True)
class Segment:
    """One piece of a tokenised prompt: text token ids, or an image of n_tokens embeddings."""

    kind: str  # "text" or "image"
    tokens: tuple[int, ...] = ()
    image_key: str | None = None
    n_tokens: int = 0


@dataclass
class _Prompt:
    text: str
    images: list[RGBImage]


@dataclass
class _Run:
    """A prompt piece decoded in one go: text tokens, or one image's embeddings.

    ``whole`` text runs are complete mtmd chunks and are cut into ``n_batch`` pieces from
    their start exactly as the naive path does; parts of a chunk split at the shared
    prefix are cut so that no piece is a single token (a 1-token decode takes a different
    matmul kernel and would change the floats).
    """

    key: tuple[Any, ...]  # ("t", tokens, whole) or ("i", image key, chunk index)
    n_pos: int
    tokens: tuple[int, ...] = ()
    chunk: Chunk | None = None
    whole: bool = True

    @property
    def n_cells(self) -> int:
        return len(self.tokens) if self.chunk is None else self.chunk.n_tokens


def _text_run(tokens: tuple[int, ...], whole: bool) -> _Run:
    return _Run(("t", tokens, whole), len(tokens), tokens, whole=whole)


def _pieces(n: int, step: int, whole: bool) -> list[tuple[int, int]]:
    bounds = [*range(0, n, step), n]
    if not whole and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return list(itertools.pairwise(bounds))


def _split_shared(runs: list[list[_Run]]) -> tuple[list[_Run], list[list[_Run]]]:
    """The longest prefix all prompts share, and each prompt's remaining runs.

    Whole runs are shared while equal; then, if every prompt continues with text, their
    common tokens are shared too, provided no side of the cut is a single token and every
    prompt keeps at least two tokens to decode.
    """
    n = _common_prefix([[r.key for r in rs] for rs in runs])
    n = min(n, min(len(rs) for rs in runs) - 1)
    prefix = list(runs[0][:n])
    rests = [rs[n:] for rs in runs]
    heads = [rest[0] for rest in rests]
    if any(h.chunk is not None for h in heads):
        return prefix, rests
    first = heads[0].tokens
    cut = min(len(h.tokens) for h in heads)
    for h in heads[1:]:
        cut = next((k for k in range(cut) if h.tokens[k] != first[k]), cut)

    def ok(c: int) -> bool:
        for h, rest in zip(heads, rests, strict=True):
            left = len(h.tokens) - c
            if left == 1 or (left == 0 and len(rest) == 1):
                return False
        return c != 1

    while cut > 0 and not ok(cut):
        cut -= 1
    if cut == 0:
        return prefix, rests
    prefix.append(_text_run(first[:cut], whole=cut == len(first)))
    out = []
    for h, rest in zip(heads, rests, strict=True):
        left = h.tokens[cut:]
        out.append(([_text_run(left, whole=False)] if left else []) + rest[1:])
    return prefix, out


PREPARE_QUERY = "a photo"  # any text: the prepared head (header + image) precedes it


class LlamaMtmdScorer:
    """Score (query, candidate) pairs with a GGUF VLM; see the module doc."""

    def __init__(
        self,
        model_path: str | Path,
        mmproj_path: str | Path | None,
        *,
        n_ctx: int | None = None,
        n_batch: int = 512,
        batch_size: int = 1,
        n_threads: int | None = None,
        max_image_tokens: int | None = None,
        embedding_cache: EmbeddingCache | str | Path | bool | None = None,
        memory_cache_mb: float = 512.0,
        state_cache: StateCache | bool | None = None,
        state_cache_mb: float | None = None,
        true_token: str | int | None = None,
        false_token: str | int | None = None,
        templates: Templates = None,
        chat_template: str | None = None,
        fast: bool = True,
        kv_type: str = "f16",
        flash_attn: bool = False,
        extra_buffers: bool | None = None,
        verbose: bool = False,
        exit_layers: ExitLayers | str | None = None,
    ):
        """``exit_layers`` ("exit-6-15" or an ``ExitLayers``) reads early-exit entropies
        (``early_exit``) for the paper's gating trigger; it needs ``batch_size`` 1."""
        self.exit_layers = ExitLayers.parse(exit_layers) if isinstance(exit_layers, str) else exit_layers
        capture = None
        if self.exit_layers is not None:
            if batch_size != 1:
                raise BadInput("early-exit gating reads one candidate per decode: use batch_size 1")
            import llama_cpp

            capture = LayerCapture(self.exit_layers.layers, llama_cpp)
        self._head: OutputHead | None = None
        self._exit_rows: dict[int, dict[int, np.ndarray]] = {}
        self._kv_type_name = kv_type
        self.rt = LlamaRuntime(
            model_path,
            mmproj_path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_seq=batch_size,
            n_threads=n_threads,
            max_image_tokens=max_image_tokens,
            kv_type=kv_type,
            flash_attn=flash_attn,
            extra_buffers=extra_buffers,
            verbose=verbose,
            capture=capture,
        )
        try:
            self.chat_template = chat_template or self.rt.chat_template()
            if not self.chat_template:
                raise BadModelFile(
                    f"{model_path} carries no chat template",
                    hint="pass chat_template= (e.g. 'gemma' or 'chatml')",
                )
            # resolved in context: the token that follows this template's generation prompt
            self.true_id = self.rt.answer_token(
                ANSWER_TRUE if true_token is None else true_token, self.chat_template
            )
            self.false_id = self.rt.answer_token(
                ANSWER_FALSE if false_token is None else false_token, self.chat_template
            )
            if self.true_id == self.false_id:
                raise BadModelFile(f"'True' and 'False' map to the same token in {model_path}")
        except BaseException:
            self.rt.close()
            raise
        self.fast = fast
        self.templates = templates
        self.stats = ScorerStats()
        self._embeddings: OrderedDict[str, list[np.ndarray]] = OrderedDict()
        self._memory_cap = int(memory_cache_mb * 1024 * 1024)
        self._disk = self._open_disk_cache(embedding_cache)
        if state_cache is None and state_cache_mb:
            state_cache = True
        self._state_cache_mb = state_cache_mb or 4096.0
        self._states = self._open_state_cache(state_cache)
        self._prefix: list[tuple[Any, ...]] = []  # unit keys held on sequence 0
        self._prefix_pos: list[int] = []  # start position of each prefix unit
        self._prefix_end = 0

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        self.rt.close()

    def __enter__(self) -> LlamaMtmdScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        rt = getattr(self, "rt", None)
        if rt is not None:
            rt.close()

    def clear_caches(self) -> None:
        """Forget in-memory image embeddings and the kept prefix (the disk cache stays)."""
        self._embeddings.clear()
        self._reset()

    def _open_disk_cache(self, spec: EmbeddingCache | str | Path | bool | None) -> EmbeddingCache | None:
        if spec is None or spec is False:
            return None
        if isinstance(spec, EmbeddingCache):
            return spec
        # hashed once per file version, not at every start (a real mmproj is hundreds of MB)
        mmproj_sha = file_sha256(self.rt.mmproj_path)  # type: ignore[arg-type]
        namespace = cache_namespace(mmproj_sha, self.rt.image_settings())
        root = None if spec is True else Path(spec)
        return EmbeddingCache(namespace, root)

    def _open_state_cache(self, spec: StateCache | bool | None) -> StateCache | None:
        """KV states of query-independent prompt heads (``state_cache``); one candidate per decode."""
        if spec is None or spec is False:
            return None
        if self.rt.n_seq != 1:
            raise BadInput("the KV-state cache restores one candidate per decode: use batch_size 1")
        if isinstance(spec, StateCache):
            return spec
        model_sha = file_sha256(self.rt.model_path)
        mmproj_sha = file_sha256(self.rt.mmproj_path)  # type: ignore[arg-type]
        settings = {**self.rt.image_settings(), "model": model_sha, "kv": self._kv_type_name}
        return StateCache(cache_namespace(mmproj_sha, settings), disk_mb=self._state_cache_mb)

    # -- public API -----------------------------------------------------------------------

    def answer_probs(
        self,
        query: Item | Any,
        candidates: Sequence[Item | Any],
        *,
        enhanced: bool = False,
        fast: bool | None = None,
    ) -> list[AnswerProbs]:
        """One pass per candidate (the ``backend.PairBackend`` step): P(True), P(False), entropies.

        ``enhanced`` repeats the image after the question (the candidate's, else the query's).
        """
        q, cands, qimg, cimgs = _loaded(query, candidates)
        if not cands:
            return []
        return self._run(q, cands, qimg, cimgs, enhanced=enhanced, fast=self.fast if fast is None else fast)

    def score_pairs(
        self,
        query: Item | Any,
        candidates: Sequence[Item | Any],
        *,
        enhance: Enhance | str = "off",
        fast: bool | None = None,
    ) -> list[PairScore]:
        """Scores under an enhancement mode, in input order (``gating.gate`` over ``answer_probs``)."""
        mode = Enhance.parse(enhance)
        q, cands, qimg, cimgs = _loaded(query, candidates)  # decoded once for both passes
        if not cands:
            return []
        use_fast = self.fast if fast is None else fast

        def passes(idx: list[int], enhanced: bool) -> list[AnswerProbs]:
            return self._run(q, [cands[i] for i in idx], qimg, [cimgs[i] for i in idx], enhanced=enhanced,
                             fast=use_fast)  # fmt: skip

        can = [enhance_side(c.has_image, q.has_image) is not None for c in cands]
        return gate(mode, passes, len(cands), can)

    def prepare(
        self,
        images: Sequence[Any],
        *,
        batch: int = 8,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Do ahead of any query what a text -> image query needs of each image.

        Its projector embeddings (kept in the disk embedding cache, when there is one) and,
        with a state cache, the KV state of chat header + image, which every later query
        restores. Runs the images in groups of ``batch`` as candidates of a placeholder query
        (the head does not depend on the query); what is cached already costs a restore.
        Resumable: an interrupted run keeps what it cached. Returns the number of images.
        """
        items = [Item(image=im) for im in images]
        for a in range(0, len(items), batch):
            group = items[a : a + batch]
            # one candidate alone would go into the shared prefix: pair it with a cached one
            run = [items[a - 1], *group] if len(group) == 1 and a > 0 else group
            self.answer_probs(Item(text=PREPARE_QUERY), run)
            if progress is not None:
                progress(len(group))
        return len(items)

    def pick_caption(
        self, image: Any, captions: Sequence[str], *, template: str = LISTWISE_TEMPLATE
    ) -> ListwisePick:
        """Listwise image -> text: which of k (2..9) captions fits, read from digit logits.

        The captions are numbered 1..k in the prompt; the pick is the argmax over the
        logits of the k digit tokens at the answer position (no text is generated).
        """
        prompt = self._listwise_prompt(image, captions, template)
        logits = self._fast([prompt])[0]
        self.stats.prompts_scored += 1
        return choice_probs(logits, self.choice_tokens(len(captions)))

    def choice_tokens(self, k: int) -> list[int]:
        """Token ids of the digits "1".."k" the listwise answer is read from (in context)."""
        return [tok for _, tok in self._choices(k)]

    def _choices(self, k: int) -> list[tuple[str, int]]:
        """(lead, token) per digit: the listwise prompt ends with the lead (see answer_start)."""
        out = [self.rt.answer_start(str(i + 1), self.chat_template) for i in range(k)]
        if len({lead for lead, _ in out}) > 1:
            raise BadModelFile(
                f"the digits 1..{k} follow the chat template of {self.rt.model_path} differently"
            )
        return out

    @property
    def chat_format(self) -> ChatFormat:
        """How prompts are rendered: the model's Jinja template or a llama.cpp built-in."""
        return self.rt.chat_format(self.chat_template)

    def render(self, query: Item | Any, candidate: Item | Any, *, enhanced: bool = False) -> str:
        """The exact prompt text (media markers where images go) for one pair."""
        return self._pair_prompt(query, candidate, enhanced).text

    def layout(self, query: Item | Any, candidate: Item | Any, *, enhanced: bool = False) -> list[Segment]:
        """The tokenised prompt for one pair: text token ids and image slots, in order."""
        return self._segments(self._pair_prompt(query, candidate, enhanced))

    def listwise_layout(
        self, image: Any, captions: Sequence[str], *, template: str = LISTWISE_TEMPLATE
    ) -> list[Segment]:
        """The tokenised listwise prompt (as ``layout``)."""
        return self._segments(self._listwise_prompt(image, captions, template))

    def _pair_prompt(self, query: Item | Any, candidate: Item | Any, enhanced: bool) -> _Prompt:
        q, c = Item.coerce(query), Item.coerce(candidate)
        qimg = load_rgb(q.image) if q.image is not None else None
        cimg = load_rgb(c.image) if c.image is not None else None
        return self._render(q, c, qimg, cimg, enhanced)

    def _listwise_prompt(self, image: Any, captions: Sequence[str], template: str) -> _Prompt:
        parts = render_listwise(list(captions), template)
        img = load_rgb(image.image if isinstance(image, Item) else image)
        prompt = self._assemble(parts, img, None, system=None)
        lead = self._choices(len(captions))[0][0]  # e.g. " " after SmolVLM's "Assistant:"
        return _Prompt(prompt.text + lead, prompt.images) if lead else prompt

    def _segments(self, prompt: _Prompt) -> list[Segment]:
        with self._tokenize(prompt, placeholders=True) as chunks:
            return [
                Segment("text", tuple(ch.tokens))
                if ch.kind != CHUNK_IMAGE
                else Segment("image", image_key=ch.image_id, n_tokens=ch.n_tokens)
                for ch in chunks.items
            ]

    # -- prompts --------------------------------------------------------------------------

    def _template_for(self, q: Item, c: Item) -> PromptTemplate:
        pairing = (modality(q.text, q.has_image), modality(c.text, c.has_image))
        if isinstance(self.templates, PromptTemplate):
            return self.templates
        if self.templates is not None and pairing in self.templates:
            return self.templates[pairing]
        return default_template(*pairing)

    def _render(
        self, q: Item, c: Item, qimg: RGBImage | None, cimg: RGBImage | None, enhanced: bool
    ) -> _Prompt:
        template = self._template_for(q, c)
        side = enhance_side(c.has_image, q.has_image) if enhanced else None
        parts = template.render(
            q.text, c.text, query_has_image=q.has_image, candidate_has_image=c.has_image, enhance=side
        )
        return self._assemble(parts, qimg, cimg, system=template.system)

    def _assemble(
        self, parts: list[PromptPart], qimg: RGBImage | None, cimg: RGBImage | None, *, system: str | None
    ) -> _Prompt:
        marker = self.rt.marker
        content: list[str] = []
        images: list[RGBImage] = []
        for part in parts:
            if isinstance(part, Slot):
                img = qimg if part.side == "query" else cimg
                if img is None:
                    raise BadInput(f"the prompt has a {part.side} image slot but no image")
                content.append(marker)
                images.append(img)
            else:
                content.append(part.replace(marker, "<media>"))
        messages = [("system", system)] if system else []
        messages.append(("user", "".join(content)))
        return _Prompt(self.rt.apply_chat_template(self.chat_template, messages), images)

    def _tokenize(self, prompt: _Prompt, *, placeholders: bool) -> Chunks:
        bitmaps = [
            self.rt.make_bitmap(im.width, im.height, None if placeholders else im.data, im.key)
            for im in prompt.images
        ]
        try:
            return self.rt.tokenize(prompt.text, bitmaps)
        finally:
            for b in bitmaps:
                self.rt.free_bitmap(b)

    # -- evaluation -----------------------------------------------------------------------

    def _run(
        self,
        q: Item,
        cands: list[Item],
        qimg: RGBImage | None,
        cimgs: list[RGBImage | None],
        *,
        enhanced: bool,
        fast: bool,
    ) -> list[AnswerProbs]:
        prompts = [self._render(q, c, qimg, ci, enhanced) for c, ci in zip(cands, cimgs, strict=True)]
        self._exit_rows.clear()
        if fast:
            logits = self._fast(prompts)
        else:
            logits = []
            for i, p in enumerate(prompts):
                logits.append(self._naive(p))
                self._keep_exit_rows(i)
        self.stats.prompts_scored += len(prompts)
        probs = [answer_probs(lg, self.true_id, self.false_id) for lg in logits]
        if self.exit_layers is None:
            return probs
        return [replace(a, exit_entropy=self._exit_entropy(i)) for i, a in enumerate(probs)]

    def _keep_exit_rows(self, i: int) -> None:
        if self.rt.capture is not None:
            self._exit_rows[i] = self.rt.capture.take()

    def _exit_entropy(self, i: int) -> float:
        """The gate value of the paper's trigger: the largest early-exit entropy over the layers."""
        if self._head is None:
            self._head = OutputHead.from_gguf(self.rt.model_path)
        return max(exit_entropies(self._head, self._exit_rows[i]).values())

    def early_exit_entropies(self, query: Item | Any, candidate: Item | Any) -> dict[int, float]:
        """Per captured layer, the normalised top-10 entropy of the early exit (one pair, naive path)."""
        if self.exit_layers is None:
            raise BadInput("create the scorer with exit_layers= to read early exits")
        q, c = Item.coerce(query), Item.coerce(candidate)
        self._naive(self._pair_prompt(q, c, enhanced=False))
        if self._head is None:
            self._head = OutputHead.from_gguf(self.rt.model_path)
        return exit_entropies(self._head, self.rt.capture.take())

    def _reset(self) -> None:
        self.rt.clear()
        self._prefix.clear()
        self._prefix_pos.clear()
        self._prefix_end = 0

    def _naive(self, prompt: _Prompt) -> np.ndarray:
        """A fresh context, the full prompt, every image encoded again."""
        self._reset()
        try:
            with self._tokenize(prompt, placeholders=False) as chunks:
                self.rt.reserve(sum(ch.n_tokens for ch in chunks.items))
                logits = self.rt.eval_chunks(chunks)
            self.stats.images_encoded += len(prompt.images)
            return logits
        finally:
            self._reset()

    def _fast(self, prompts: list[_Prompt]) -> list[np.ndarray]:
        keep = {im.key for p in prompts for im in p.images}
        for p in prompts:
            for im in p.images:
                self._ensure_embeddings(im)
        self._evict(keep)
        all_chunks: list[Chunks] = []
        try:
            runs = []
            for p in prompts:
                chunks = self._tokenize(p, placeholders=True)
                all_chunks.append(chunks)
                runs.append(self._runs(chunks))
            return self._eval_shared(runs)
        except BaseException:
            self._reset()
            raise
        finally:
            for ch in all_chunks:
                ch.free()

    def _runs(self, chunks: Chunks) -> list[_Run]:
        out: list[_Run] = []
        seen: dict[str, int] = {}
        for ch in chunks.items:
            if ch.kind != CHUNK_IMAGE:
                out.append(_text_run(tuple(ch.tokens), whole=True))
                continue
            key = ch.image_id or ""
            embs = self._embeddings.get(key)
            if not embs:
                raise BadInput("an image chunk has no embeddings (unknown image id)")
            n = seen.get(key, 0)
            seen[key] = n + 1
            # an image seen twice (enhancement) repeats its chunks: chunk n is chunk n mod k
            if embs[n % len(embs)].shape[0] != ch.n_tokens:
                raise BadInput("an image's stored embeddings do not match its chunks in the prompt")
            out.append(_Run(("i", key, n % len(embs)), ch.n_pos, chunk=ch))
        if any(n % len(self._embeddings[key]) for key, n in seen.items()):
            raise BadInput("an image's stored embeddings do not match its chunks in the prompt")
        return out

    def _eval_shared(self, runs: list[list[_Run]]) -> list[np.ndarray]:
        prefix, suffixes = _split_shared(runs)
        prefix_cells = sum(r.n_cells for r in prefix)
        need = prefix_cells + max(sum(r.n_cells for r in rest) for rest in suffixes)
        if self.rt.reserve(need):  # a new, larger context: sequence 0 holds nothing yet
            self._reset()
        start = self._sync_prefix(prefix)
        results: list[np.ndarray | None] = [None] * len(runs)
        order = list(range(len(runs)))
        for g in range(0, len(order), self.rt.n_seq):
            self._eval_group(order[g : g + self.rt.n_seq], suffixes, start, results)
        return [r for r in results if r is not None]

    def _sync_prefix(self, prefix: list[_Run]) -> int:
        """Make sequence 0 hold exactly ``prefix``, reusing what it already holds."""
        keys = [r.key for r in prefix]
        m = _common_prefix([self._prefix, keys])
        if m < len(self._prefix):
            end = self._prefix_pos[m]
            self.rt.seq_rm(0, end)
            del self._prefix[m:]
            del self._prefix_pos[m:]
            self._prefix_end = end
        self.stats.prefix_units_reused += m
        try:
            for r in prefix[m:]:
                self._prefix.append(r.key)
                self._prefix_pos.append(self._prefix_end)
                self._prefix_end = self._decode_run(r, self._prefix_end, seq=0)
        except BaseException:
            self._reset()
            raise
        self.stats.prefix_units_evaluated += len(prefix) - m
        return self._prefix_end

    def _eval_group(
        self,
        group: list[int],
        suffixes: list[list[_Run]],
        start: int,
        results: list[np.ndarray | None],
    ) -> None:
        rt = self.rt
        tails: list[tuple[int, int, int, tuple[int, ...]]] = []
        try:
            for j, i in enumerate(group):
                seq = j + 1
                *body, last = suffixes[i]
                pos = self._restore_or_decode(seq, start, body)
                pieces = _pieces(len(last.tokens), rt.n_batch, last.whole)
                for a, b in pieces[:-1]:
                    pos = self._decode_piece(last.tokens[a:b], pos, seq)
                a, b = pieces[-1]
                tails.append((i, seq, pos, last.tokens[a:b]))
            # The final pieces of the group's prompts share one batched decode.
            entries: list[tuple[int, int, int, bool]] = []
            owners: list[tuple[int, int]] = []
            for i, seq, pos, tail in tails:
                if entries and len(entries) + len(tail) > rt.n_batch:
                    self._decode_batch(entries, owners, results)
                    entries, owners = [], []
                entries.extend((t, pos + k, seq, k == len(tail) - 1) for k, t in enumerate(tail))
                owners.append((i, len(entries) - 1))
            self._decode_batch(entries, owners, results)
        finally:
            for j in range(len(group)):
                rt.seq_rm(j + 1)

    def _restore_or_decode(self, seq: int, start: int, body: list[_Run]) -> int:
        """Put prefix + ``body`` on ``seq``; returns the next position.

        With a state cache, the head up to the body's first image (the query-independent part
        of a text -> image prompt: chat header + candidate image) is restored from a saved
        state when known, else decoded and saved; the rest of the body is decoded.
        """
        rt = self.rt
        images = [k for k, r in enumerate(body) if r.chunk is not None]
        if self._states is None or not images:
            rt.seq_cp(0, seq)
            pos = start
            for r in body:
                pos = self._decode_run(r, pos, seq)
            return pos
        cut = images[0] + 1
        key = head_key([*self._prefix, *(r.key for r in body[:cut])])
        got = self._states.get(key)
        pos = None
        if got is not None:
            data, end = got
            rt.seq_rm(seq)
            if rt.state_seq_set(seq, data):
                pos = end
                self.stats.states_restored += 1
            else:
                rt.seq_rm(seq)
                self._states.drop(key)
        if pos is None:
            rt.seq_cp(0, seq)
            pos = start
            for r in body[:cut]:
                pos = self._decode_run(r, pos, seq)
            self._states.put(key, rt.state_seq_get(seq), pos)
            self.stats.states_saved += 1
        for r in body[cut:]:
            pos = self._decode_run(r, pos, seq)
        return pos

    def _decode_batch(
        self,
        entries: list[tuple[int, int, int, bool]],
        owners: list[tuple[int, int]],
        results: list[np.ndarray | None],
    ) -> None:
        if not entries:
            return
        self.rt.decode_tokens(entries)
        for i, idx in owners:
            results[i] = self.rt.logits(idx)
            self._keep_exit_rows(i)  # one owner per decode when capturing (batch_size 1)

    def _decode_run(self, run: _Run, pos: int, seq: int) -> int:
        if run.chunk is not None:
            embd = self._embeddings[run.key[1]][run.key[2]]
            return self.rt.decode_image(run.chunk, embd, pos, seq)
        for a, b in _pieces(len(run.tokens), self.rt.n_batch, run.whole):
            pos = self._decode_piece(run.tokens[a:b], pos, seq)
        return pos

    def _decode_piece(self, tokens: Sequence[int], pos: int, seq: int) -> int:
        self.rt.decode_tokens([(t, pos + k, seq, False) for k, t in enumerate(tokens)])
        return pos + len(tokens)

    # -- image embeddings -----------------------------------------------------------------

    def _ensure_embeddings(self, im: RGBImage) -> None:
        if im.key in self._embeddings:
            self._embeddings.move_to_end(im.key)
            self.stats.embedding_memory_hits += 1
            return
        if self._disk is not None:
            # a hit must fit the chunks mtmd makes of this image now (placeholder: no pixels)
            with self._image_chunks(im, placeholder=True) as chunks:
                layout = chunks.image_layout()
            arrays = self._disk.get(im.key, layout, self.rt.n_embd)
            if arrays is not None:
                self._embeddings[im.key] = arrays
                self.stats.embedding_disk_hits += 1
                return
        with self._image_chunks(im, placeholder=False) as chunks:
            layout = chunks.image_layout()
            arrays = self.rt.encode_image_chunks(chunks)
        if not arrays:
            raise BadInput("the projector produced no image chunk for an image")
        self._embeddings[im.key] = arrays
        self.stats.images_encoded += 1
        if self._disk is not None:
            self._disk.put(im.key, layout, arrays)

    def _image_chunks(self, im: RGBImage, *, placeholder: bool) -> Chunks:
        bmp = self.rt.make_bitmap(im.width, im.height, None if placeholder else im.data, im.key)
        try:
            return self.rt.tokenize(self.rt.marker, [bmp], add_special=False)
        finally:
            self.rt.free_bitmap(bmp)

    def _evict(self, keep: set[str]) -> None:
        total = sum(a.nbytes for arrs in self._embeddings.values() for a in arrs)
        for key in list(self._embeddings):
            if total <= self._memory_cap:
                break
            if key in keep:
                continue
            total -= sum(a.nbytes for a in self._embeddings.pop(key))


def _loaded(
    query: Item | Any, candidates: Sequence[Item | Any]
) -> tuple[Item, list[Item], RGBImage | None, list[RGBImage | None]]:
    """The items, and their images decoded to RGB bitmaps (None for text-only ones)."""
    q = Item.coerce(query)
    cands = [Item.coerce(c) for c in candidates]
    qimg = load_rgb(q.image) if q.image is not None else None
    return q, cands, qimg, [load_rgb(c.image) if c.image is not None else None for c in cands]


def _common_prefix(seqs: list[list[tuple[Any, ...]]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        key = first[k]
        if any(s[k] != key for s in seqs[1:]):
            return k
    return n
