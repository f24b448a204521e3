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

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from retllm_lite.errors import BadInput, BadModelFile
from retllm_lite.hashing import cached_sha256
from retllm_lite.rerank.chat_template import ChatFormat
from retllm_lite.rerank.early_exit import ExitLayers, LayerCapture, OutputHead, exit_entropies
from retllm_lite.rerank.embedding_cache import EmbeddingCache, cache_namespace
from retllm_lite.rerank.gating import Enhance, gate
from retllm_lite.rerank.images import RGBImage, load_rgb
from retllm_lite.rerank.llama_runtime import LlamaRuntime
from retllm_lite.rerank.logits import AnswerProbs, ChoiceProbs, answer_probs, choice_probs
from retllm_lite.rerank.mtmd_chunks import CHUNK_IMAGE, Chunks
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
from retllm_lite.rerank.shared_prefix import PrefixDecoder, ScorerStats
from retllm_lite.rerank.state_cache import StateCache

ListwisePick = ChoiceProbs
Templates = PromptTemplate | Mapping[tuple[Modality, Modality], PromptTemplate] | None


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
        self._decoder = PrefixDecoder(
            self.rt, self._embeddings, self.stats, self._keep_exit_rows, self._open_state_cache(state_cache)
        )

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

    def clear_caches(self, *, embeddings: bool = True) -> None:
        """Forget the kept prefix and (unless ``embeddings=False``) the in-memory image
        embeddings; the disk caches stay."""
        if embeddings:
            self._embeddings.clear()
        self._decoder.reset()

    @property
    def state_cache(self) -> StateCache | None:
        """The KV-state cache of text -> image prompt heads (None: heads decoded every time)."""
        return self._decoder.states

    @state_cache.setter
    def state_cache(self, cache: StateCache | None) -> None:
        if cache is not None:
            self._require_one_seq()
        self._decoder.states = cache

    def _require_one_seq(self) -> None:
        if self.rt.n_seq != 1:
            raise BadInput("the KV-state cache restores one candidate per decode: use batch_size 1")

    def _open_disk_cache(self, spec: EmbeddingCache | str | Path | bool | None) -> EmbeddingCache | None:
        if spec is None or spec is False:
            return None
        if isinstance(spec, EmbeddingCache):
            return spec
        # hashed once per file version, not at every start (a real mmproj is hundreds of MB)
        mmproj_sha = cached_sha256(self.rt.mmproj_path)  # type: ignore[arg-type]
        namespace = cache_namespace(mmproj_sha, self.rt.image_settings())
        root = None if spec is True else Path(spec)
        return EmbeddingCache(namespace, root)

    def _open_state_cache(self, spec: StateCache | bool | None) -> StateCache | None:
        """KV states of query-independent prompt heads (``state_cache``); one candidate per decode."""
        if spec is None or spec is False:
            return None
        self._require_one_seq()  # before hashing the model files
        if isinstance(spec, StateCache):
            return spec
        model_sha = cached_sha256(self.rt.model_path)
        mmproj_sha = cached_sha256(self.rt.mmproj_path)  # type: ignore[arg-type]
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
        if self.state_cache is None:  # embeddings only: nothing to decode
            for im in images:
                self._ensure_embeddings(load_rgb(im))
                self._evict(set())  # the disk cache keeps them; memory stays under its cap
                if progress is not None:
                    progress(1)
            return len(images)
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

    def _naive(self, prompt: _Prompt) -> np.ndarray:
        """A fresh context, the full prompt, every image encoded again."""
        self._decoder.reset()
        try:
            with self._tokenize(prompt, placeholders=False) as chunks:
                self.rt.reserve(sum(ch.n_tokens for ch in chunks.items))
                logits = self.rt.eval_chunks(chunks)
            self.stats.images_encoded += len(prompt.images)
            return logits
        finally:
            self._decoder.reset()

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
                runs.append(self._decoder.runs(chunks))
            return self._decoder.eval_shared(runs)
        except BaseException:
            self._decoder.reset()
            raise
        finally:
            for ch in all_chunks:
                ch.free()

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
