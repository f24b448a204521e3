"""Run an evaluation: CLIP vectors -> exact similarity -> VLM passes -> Recall@K per config.

The VLM work is done once per pair and pass, and only where some configuration needs it:

* the plain pass (no image repeated) for every pair in the top-k of the largest k, when
  ``off`` or ``gated`` is asked for;
* the enhanced pass (the image inserted again) for every such pair with ``always``, else
  only where the plain pass's entropy exceeds the lowest gate threshold.

Every configuration is then composed from these two tables (a smaller k reranks a prefix
of the same pairs; ``gated`` takes the enhanced pass exactly where the backend would),
and the ``EvalCache`` keeps the passes, the listwise picks and the CLIP vectors, so a
re-run, or one with another configuration, only computes what is new.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from retllm_lite.encode import ImageLoadError, PixelEncoder
from retllm_lite.errors import BadInput, BadModelFile
from retllm_lite.eval.cache import EvalCache, image_key, text_key
from retllm_lite.eval.datasets import Dataset
from retllm_lite.eval.metrics import (
    first_hit,
    first_hits,
    listwise_order,
    nearest,
    recall_at,
    rerank_prefix,
)
from retllm_lite.eval.protocol import (
    FINE_NOTE,
    LABELS,
    Config,
    ConfigResult,
    Direction,
    EvalReport,
    Settings,
    compose,
)
from retllm_lite.hashing import fingerprint_bytes, fingerprint_file
from retllm_lite.rerank.gating import Enhance
from retllm_lite.rerank.logits import ChoiceProbs
from retllm_lite.rerank.pairs import Item, PairScore, PassScores
from retllm_lite.rerank.prompts import LISTWISE_TEMPLATE
from retllm_lite.rerank.ranking import rank_order

Progress = Callable[[str, int, int], None]
Table = list[list[PassScores | None]]  # [query][position in its coarse top-k]


class EvalBackend(Protocol):
    """What the runner needs from a reranker (``LlamaMtmdScorer`` has it all)."""

    def answer_probs(self, query: Item, candidates: Sequence[Item], *, enhanced: bool) -> list[Any]: ...

    def pick_caption(self, image: Any, captions: Sequence[str]) -> ChoiceProbs: ...

    def render(self, query: Item, candidate: Item, *, enhanced: bool = False) -> str: ...


@dataclass
class EvalStats:
    """What a run computed and what it found in the cache (tests read these)."""

    images_embedded: int = 0
    image_vectors_cached: int = 0
    texts_embedded: int = 0
    text_vectors_cached: int = 0
    pairs_scored: int = 0
    pair_scores_cached: int = 0
    listwise_scored: int = 0
    listwise_cached: int = 0


def describe_vlm(backend: Any) -> dict[str, Any]:
    """The reranker's files and their sha256 (remembered by size and mtime between runs)."""
    from retllm_lite.hashing import cached_sha256

    rt = getattr(backend, "rt", None)
    if rt is None or getattr(rt, "model_path", None) is None:
        raise BadInput("this reranker does not say which model it runs", hint="pass vlm_identity={...}")
    out = {
        "model": str(rt.model_path),
        "model_sha256": cached_sha256(rt.model_path),
        "mmproj": str(rt.mmproj_path),
        "mmproj_sha256": cached_sha256(rt.mmproj_path) if rt.mmproj_path else None,
    }
    if hasattr(rt, "image_settings"):  # llama.cpp build and image-token budget change the scores
        out["images"] = rt.image_settings()
    return out


def _placeholder_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (8, 8), (128, 128, 128))


class Evaluator:
    """Evaluate one encoder (and optionally one reranker) on datasets; see the module doc."""

    def __init__(
        self,
        encoder: PixelEncoder,
        backend: EvalBackend | None = None,
        *,
        cache: EvalCache | None = None,
        progress: Progress | None = None,
        log: Callable[[str], None] | None = None,
        vlm_identity: dict[str, Any] | None = None,
    ):
        self.encoder = encoder
        self.backend = backend
        self.cache = cache if cache is not None else EvalCache()
        self.progress: Progress = progress or (lambda stage, done, total: None)
        self.log = log or (lambda message: None)
        self.vlm = None if backend is None else (vlm_identity or describe_vlm(backend))
        self.stats = EvalStats()
        # The last run's dataset (without unreadable images), cache keys and VLM passes.
        self.dataset: Dataset | None = None
        self.image_keys: list[str] = []
        self.text_keys: list[str] = []
        self.tables: dict[Direction, tuple[np.ndarray, Table, Table]] = {}

    # -- the run --------------------------------------------------------------------------

    def run(self, dataset: Dataset, settings: Settings | None = None) -> EvalReport:
        settings = settings or Settings()
        self.stats = EvalStats()
        self.tables = {}
        timings: dict[str, float] = {}
        notes: list[str] = []
        started = time.perf_counter()
        with _timed(timings, "clip_images"):
            image_vecs, dataset = self._embed_images(dataset)
        self.dataset = dataset
        captions = dataset.captions
        owner = dataset.caption_owner
        with _timed(timings, "clip_captions"):
            text_vecs = self._embed_texts(captions)
        with _timed(timings, "coarse"):
            orders: dict[Direction, np.ndarray] = {
                "t2i": nearest(text_vecs, image_vecs, settings.depth),
                "i2t": nearest(image_vecs, text_vecs, settings.depth),
            }
        by_image: list[set[int]] = [set() for _ in dataset.samples]
        for c, i in enumerate(owner):
            by_image[i].add(c)
        relevant: dict[Direction, list[set[int]]] = {"t2i": [{i} for i in owner], "i2t": by_image}
        dirs = settings.directions
        coarse_hits = {d: first_hits(orders[d], relevant[d]) for d in dirs}
        results = [
            ConfigResult(Config("coarse"), {d: recall_at(coarse_hits[d], settings.recall_ks) for d in dirs})
        ]

        fine = settings.fine and self.backend is not None
        if settings.fine and self.backend is None:
            notes.append("No reranker given: coarse stage only.")
        if fine:
            notes.append(FINE_NOTE)
            gallery = {"t2i": len(dataset.samples), "i2t": len(captions)}
            for d in dirs:
                if max(settings.ks) > gallery[d]:
                    notes.append(
                        f"{LABELS[d]}: k={max(settings.ks)} exceeds the gallery ({gallery[d]}): "
                        "the fine stage reranks all of it."
                    )
                kmax = min(max(settings.ks), gallery[d])
                self.tables[d] = (
                    orders[d][:, :kmax],
                    *self._fine_tables(d, orders[d][:, :kmax], settings, timings),
                )
            for cfg in settings.configs():
                if cfg.stage == "fine":
                    results.append(self._fine_result(cfg, settings, orders, relevant, coarse_hits))
            if settings.listwise:
                skipped = [k for k in settings.ks if k not in settings.listwise_ks]
                if skipped:
                    notes.append(f"Listwise needs 2 <= k <= 9 (one digit per caption): skipped k={skipped}.")
                if "i2t" not in dirs:
                    notes.append("Listwise is image→text only: skipped (--direction t2i).")
                else:
                    for k in settings.listwise_ks:
                        with _timed(timings, f"vlm_listwise_k{k}"):
                            results.append(self._listwise_result(k, settings, orders["i2t"], relevant["i2t"]))
        timings["total"] = time.perf_counter() - started
        scored = self.stats.pairs_scored + self.stats.listwise_scored
        vlm_seconds = sum(v for k, v in timings.items() if k.startswith("vlm_"))
        if scored:
            timings["seconds_per_vlm_prompt"] = vlm_seconds / scored
        return EvalReport(
            dataset=dataset.to_dict(),
            settings=settings,
            models=self._models(settings, fine),
            results=results,
            timings=timings,
            counts={**asdict(self.stats)},
            notes=notes,
        )

    def _models(self, settings: Settings, fine: bool) -> dict[str, Any]:
        info = self.encoder.info
        out: dict[str, Any] = {
            "clip": {
                "name": info.name,
                "manifest_sha256": info.manifest_sha256,
                "variant": info.variant,
                "dim": info.dim,
                "location": info.location,
            }
        }
        if fine and self.vlm is not None and self.backend is not None:
            prompts = {d: self.backend.render(*self._placeholder_pair(d)) for d in settings.directions}
            out["vlm"] = {**self.vlm, "rule": settings.rule, "prompts": prompts}
            if settings.listwise_ks:
                out["vlm"]["listwise_template"] = LISTWISE_TEMPLATE
        return out

    # -- CLIP -----------------------------------------------------------------------------

    def _embed_images(self, dataset: Dataset) -> tuple[np.ndarray, Dataset]:
        enc = self.encoder
        samples = dataset.samples
        bad: dict[int, str] = {}
        keys: list[str] = []
        for i, s in enumerate(samples):
            try:
                keys.append(image_key(fingerprint_file(s.image)))
            except OSError as exc:
                keys.append("")
                bad[i] = f"cannot read: {exc.strerror or exc}"
        vectors = self.cache.vectors(enc.info.key, "image", [k for k in keys if k], enc.info.dim)
        self.stats.image_vectors_cached = sum(1 for i, k in enumerate(keys) if i not in bad and k in vectors)
        todo: list[int] = []
        queued: set[str] = set()
        for i, k in enumerate(keys):
            if i not in bad and k not in vectors and k not in queued:
                todo.append(i)
                queued.add(k)
        batch = max(1, int(getattr(enc, "batch_size", 16)))
        for a in range(0, len(todo), batch):
            self.progress("CLIP images", a, len(todo))
            pixels, ok = [], []
            for i in todo[a : a + batch]:
                try:
                    pixels.append(enc.preprocess(enc.load_image(samples[i].image).image))
                    ok.append(i)
                except ImageLoadError as exc:
                    bad[i] = str(exc)
            if pixels:
                new = dict(zip((keys[i] for i in ok), enc.embed_pixels(np.stack(pixels)), strict=True))
                self.cache.put_vectors(enc.info.key, "image", new)
                vectors.update(new)
                self.stats.images_embedded += len(ok)
        if todo:
            self.progress("CLIP images", len(todo), len(todo))
        for i, k in enumerate(keys):  # duplicates of an unreadable file
            if i not in bad and k not in vectors:
                bad[i] = "unreadable (same content as another unreadable image)"
        kept = [k for i, k in enumerate(keys) if i not in bad]
        dataset = dataset.without(bad)
        if not dataset.samples:
            raise BadInput(
                f"{dataset.source}: none of the images could be read", hint="check the image files"
            )
        self.image_keys = kept
        return np.stack([vectors[k] for k in kept]), dataset

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        enc = self.encoder
        keys = [text_key(t) for t in texts]
        vectors = self.cache.vectors(enc.info.key, "text", keys, enc.info.dim)
        self.stats.text_vectors_cached = sum(1 for k in keys if k in vectors)
        todo: list[int] = []
        queued: set[str] = set()
        for i, k in enumerate(keys):
            if k not in vectors and k not in queued:
                todo.append(i)
                queued.add(k)
        batch = max(1, int(getattr(enc, "batch_size", 16)))
        for a in range(0, len(todo), batch):
            self.progress("CLIP captions", a, len(todo))
            part = todo[a : a + batch]
            new = dict(zip((keys[i] for i in part), enc.embed_texts([texts[i] for i in part]), strict=True))
            self.cache.put_vectors(enc.info.key, "text", new)
            vectors.update(new)
            self.stats.texts_embedded += len(part)
        if todo:
            self.progress("CLIP captions", len(todo), len(todo))
        self.text_keys = keys
        return np.stack([vectors[k] for k in keys])

    # -- VLM, pointwise -------------------------------------------------------------------

    def _query_item(self, d: Direction, q: int) -> Item:
        if d == "t2i":
            return Item(text=self.dataset.captions[q])
        return Item(image=self.dataset.samples[q].image)

    def _gallery_item(self, d: Direction, g: int) -> Item:
        if d == "t2i":
            return Item(image=self.dataset.samples[g].image)
        return Item(text=self.dataset.captions[g])

    def _keys(self, d: Direction) -> tuple[list[str], list[str]]:
        """(query keys, gallery keys) for the caches."""
        return (self.text_keys, self.image_keys) if d == "t2i" else (self.image_keys, self.text_keys)

    @staticmethod
    def _placeholder_pair(d: Direction) -> tuple[Item, Item]:
        text, image = Item(text="<caption>"), Item(image=_placeholder_image())
        return (text, image) if d == "t2i" else (image, text)

    def _namespace(self, d: Direction, enhanced: bool) -> str:
        """Model + projector sha256 and the exact prompt (placeholders in) of this pass."""
        assert self.backend is not None and self.vlm is not None
        prompt = self.backend.render(*self._placeholder_pair(d), enhanced=enhanced)
        ids = [getattr(self.backend, "true_id", None), getattr(self.backend, "false_id", None)]
        blob = json.dumps(
            [self.vlm.get("model_sha256"), self.vlm.get("mmproj_sha256"), prompt, ids, self.vlm.get("images")]
        )
        return fingerprint_bytes(blob.encode())

    def _fine_tables(
        self, d: Direction, top: np.ndarray, settings: Settings, timings: dict[str, float]
    ) -> tuple[Table, Table]:
        modes = settings.enhance
        n, k = top.shape
        want_plain = any(m.mode in ("off", "gated") for m in modes)
        every = [list(range(k)) for _ in range(n)]
        with _timed(timings, f"vlm_{d}_plain"):
            plain = self._pass(d, False, top, every if want_plain else [[] for _ in range(n)])
        if any(m.mode == "always" for m in modes):
            need = every
        elif any(m.mode == "gated" for m in modes):
            gates = [m for m in modes if m.mode == "gated"]
            need = [
                [j for j, s in enumerate(row) if s is not None and any(m.fires(s) for m in gates)]
                for row in plain
            ]
        else:
            need = [[] for _ in range(n)]
        with _timed(timings, f"vlm_{d}_enhanced"):
            enhanced = self._pass(d, True, top, need)
        return plain, enhanced

    def _pass(self, d: Direction, enhanced: bool, top: np.ndarray, need: list[list[int]]) -> Table:
        """One VLM pass over the needed (query, position) pairs: from the cache, else scored."""
        assert self.backend is not None
        table: Table = [[None] * top.shape[1] for _ in range(top.shape[0])]
        if not any(need):
            return table
        ns = self._namespace(d, enhanced)
        qkeys, gkeys = self._keys(d)
        todo: list[tuple[int, list[int]]] = []
        for q, positions in enumerate(need):
            if not positions:
                continue
            got = self.cache.pair_scores(ns, qkeys[q], [gkeys[top[q, j]] for j in positions])
            missing = []
            for j in positions:
                s = got.get(gkeys[top[q, j]])
                if s is None:
                    missing.append(j)
                else:
                    table[q][j] = s
            self.stats.pair_scores_cached += len(positions) - len(missing)
            if missing:
                todo.append((q, missing))
        total = sum(len(m) for _, m in todo)
        stage = f"VLM {LABELS[d]}" + (" +image" if enhanced else "")
        if total:
            cached = sum(len(p) for p in need) - total
            self.log(f"{stage}: {total} prompts to run ({cached} cached)")
        done = 0
        fresh: dict[tuple[str, str], PassScores] = {}  # repeated captions / images in this pass
        for q, missing in todo:
            self.progress(stage, done, total)
            run = [j for j in missing if (qkeys[q], gkeys[top[q, j]]) not in fresh]
            if run:
                cands = [self._gallery_item(d, int(top[q, j])) for j in run]
                out = self.backend.answer_probs(self._query_item(d, q), cands, enhanced=enhanced)
                new = {}
                for j, s in zip(run, out, strict=True):
                    ps = PassScores(s.p_true, s.p_false, s.entropy, s.vocab_entropy)
                    fresh[(qkeys[q], gkeys[top[q, j]])] = new[gkeys[top[q, j]]] = ps
                self.cache.put_pair_scores(ns, qkeys[q], new)
                self.stats.pairs_scored += len(run)
            for j in missing:
                table[q][j] = fresh[(qkeys[q], gkeys[top[q, j]])]
            done += len(missing)
        if total:
            self.progress(stage, total, total)
        return table

    def scores(self, d: Direction, k: int, mode: Enhance | str) -> list[list[PairScore]]:
        """The last run's pair scores of each query's coarse top-k under an enhancement mode."""
        top, plain, enhanced = self.tables[d]
        m = Enhance.parse(mode)
        k = min(k, top.shape[1])
        return [[compose(plain[q][j], enhanced[q][j], m) for j in range(k)] for q in range(top.shape[0])]

    def _fine_result(
        self,
        cfg: Config,
        settings: Settings,
        orders: dict[Direction, np.ndarray],
        relevant: dict[Direction, list[set[int]]],
        coarse_hits: dict[Direction, np.ndarray],
    ) -> ConfigResult:
        assert cfg.k is not None and cfg.enhance is not None
        recall, enhanced, changed = {}, {}, {}
        for d in cfg.directions(settings.directions):
            scores = self.scores(d, cfg.k, cfg.enhance)
            hits, moved, fired, pairs = [], 0, 0, 0
            for q, row in enumerate(scores):
                perm = [i for i, _ in rank_order(row, rule=settings.rule, tie_break=cfg.tie_break)]
                order = rerank_prefix(orders[d][q], perm)
                hits.append(first_hit(order, relevant[d][q]))
                moved += perm[0] != 0
                fired += sum(s.enhanced for s in row)
                pairs += len(row)
            recall[d] = recall_at(hits, settings.recall_ks)
            enhanced[d] = fired / pairs if pairs else 0.0
            changed[d] = moved / len(scores) if scores else 0.0
        return ConfigResult(cfg, recall, enhanced=enhanced, top1_changed=changed)

    # -- VLM, listwise --------------------------------------------------------------------

    def _listwise_result(
        self, k: int, settings: Settings, order: np.ndarray, relevant: list[set[int]]
    ) -> ConfigResult:
        assert self.backend is not None and self.vlm is not None
        layout = [self.vlm.get("model_sha256"), self.vlm.get("mmproj_sha256"), LISTWISE_TEMPLATE]
        layout.append(self.vlm.get("images"))
        layout.append(self.backend.render(*self._placeholder_pair("i2t")))  # the chat template
        ns = fingerprint_bytes(json.dumps(layout).encode())
        qkeys, gkeys = self.image_keys, self.text_keys
        k = min(k, order.shape[1])
        stage = f"VLM listwise k={k}"
        positions = [0] * k
        hits, moved = [], 0
        n = order.shape[0]
        for q in range(n):
            self.progress(stage, q, n)
            cands = [gkeys[c] for c in order[q, :k]]
            pick = self.cache.pick(ns, qkeys[q], cands)
            if pick is None:
                texts = [self.dataset.captions[c] for c in order[q, :k]]
                pick = self.backend.pick_caption(self.dataset.samples[q].image, texts)
                if not 0 <= pick.index < k:
                    raise BadModelFile(f"the reranker picked caption {pick.index + 1} of {k}")
                self.cache.put_pick(ns, qkeys[q], cands, pick)
                self.stats.listwise_scored += 1
            else:
                self.stats.listwise_cached += 1
            positions[pick.index] += 1
            moved += pick.index != 0
            hits.append(first_hit(listwise_order(order[q], k, pick.index), relevant[q]))
        self.progress(stage, n, n)
        return ConfigResult(
            Config("listwise", k),
            {"i2t": recall_at(hits, settings.recall_ks)},
            top1_changed={"i2t": moved / n if n else 0.0},
            pick_positions=positions,
        )


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
