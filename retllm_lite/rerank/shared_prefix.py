"""Prompts as runs, decoded with the prefix they share kept on sequence 0 (the fast path).

A prompt is cut into runs (``Run``): text tokens, or one image chunk's embeddings. Across the
prompts of one call (the candidates of a query) ``split_shared`` finds the longest common
prefix; ``PrefixDecoder`` keeps it on llama.cpp sequence 0 between calls, copies it
(``llama_memory_seq_cp``) onto each candidate's sequence and decodes only the rest. With a
``StateCache`` the query-independent head of a text -> image prompt (chat header + the
candidate's image) is restored from a saved KV state instead of decoded. Text is cut into
``n_batch`` pieces exactly as the naive path cuts it, so the floats match (see ``Run``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retllm_lite.errors import BadInput
from retllm_lite.rerank.llama_runtime import LlamaRuntime
from retllm_lite.rerank.mtmd_chunks import CHUNK_IMAGE, Chunk, Chunks
from retllm_lite.rerank.state_cache import StateCache, head_key


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
    image_runs_decoded: int = 0  # image chunks decoded (a restored state decodes none of its own)


@dataclass
class Run:
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


def text_run(tokens: tuple[int, ...], whole: bool) -> Run:
    return Run(("t", tokens, whole), len(tokens), tokens, whole=whole)


def piece_bounds(n: int, step: int, whole: bool) -> list[tuple[int, int]]:
    bounds = [*range(0, n, step), n]
    if not whole and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds[-2] -= 1
    return list(itertools.pairwise(bounds))


def image_end(body: list[Run], first: int, n_chunks: int) -> int:
    """Index just past the last chunk of the image whose first chunk is ``body[first]``.

    A tiled picture (Idefics3/SmolVLM: one chunk a tile, with row/column marker text
    between tiles) is several runs; the query-independent head of a text -> image prompt
    ends after its last tile, not its first. The same image seen again later
    (enhancement) starts over at chunk 0, so it is not part of this one.
    """
    image = body[first].key[1]
    for k in range(first, len(body)):
        r = body[k]
        if r.chunk is not None and r.key[1] == image and r.key[2] == n_chunks - 1:
            return k + 1
    return first + 1


def split_shared(runs: list[list[Run]]) -> tuple[list[Run], list[list[Run]]]:
    """The longest prefix all prompts share, and each prompt's remaining runs.

    Whole runs are shared while equal; then, if every prompt continues with text, their
    common tokens are shared too, provided no side of the cut is a single token and every
    prompt keeps at least two tokens to decode.
    """
    n = common_prefix([[r.key for r in rs] for rs in runs])
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
    prefix.append(text_run(first[:cut], whole=cut == len(first)))
    out = []
    for h, rest in zip(heads, rests, strict=True):
        left = h.tokens[cut:]
        out.append(([text_run(left, whole=False)] if left else []) + rest[1:])
    return prefix, out


def common_prefix(seqs: list[list[tuple[Any, ...]]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for k in range(n):
        key = first[k]
        if any(s[k] != key for s in seqs[1:]):
            return k
    return n


class PrefixDecoder:
    """Runs in, last-position logits out, with the shared prefix kept between calls.

    ``embeddings`` maps an image key to its chunks' embeddings (the scorer's in-memory
    store); ``on_logits(i)`` is called after prompt ``i``'s logits are read (early-exit
    capture); ``states`` is the optional KV-state cache of text -> image heads.
    """

    def __init__(
        self,
        rt: LlamaRuntime,
        embeddings: Mapping[str, list[np.ndarray]],
        stats: ScorerStats,
        on_logits: Callable[[int], None],
        states: StateCache | None = None,
    ):
        self.rt = rt
        self.embeddings = embeddings
        self.stats = stats
        self.on_logits = on_logits
        self.states = states
        self._prefix: list[tuple[Any, ...]] = []  # unit keys held on sequence 0
        self._prefix_pos: list[int] = []  # start position of each prefix unit
        self._prefix_end = 0

    def reset(self) -> None:
        """Forget the kept prefix and clear the context."""
        self.rt.clear()
        self._prefix.clear()
        self._prefix_pos.clear()
        self._prefix_end = 0

    def runs(self, chunks: Chunks) -> list[Run]:
        """A tokenised prompt's chunks as runs; image chunks take their stored embeddings."""
        out: list[Run] = []
        seen: dict[str, int] = {}
        for ch in chunks.items:
            if ch.kind != CHUNK_IMAGE:
                out.append(text_run(tuple(ch.tokens), whole=True))
                continue
            key = ch.image_id or ""
            embs = self.embeddings.get(key)
            if not embs:
                raise BadInput("an image chunk has no embeddings (unknown image id)")
            n = seen.get(key, 0)
            seen[key] = n + 1
            # an image seen twice (enhancement) repeats its chunks: chunk n is chunk n mod k
            if embs[n % len(embs)].shape[0] != ch.n_tokens:
                raise BadInput("an image's stored embeddings do not match its chunks in the prompt")
            out.append(Run(("i", key, n % len(embs)), ch.n_pos, chunk=ch))
        if any(n % len(self.embeddings[key]) for key, n in seen.items()):
            raise BadInput("an image's stored embeddings do not match its chunks in the prompt")
        return out

    def eval_shared(self, runs: list[list[Run]]) -> list[np.ndarray]:
        prefix, suffixes = split_shared(runs)
        prefix_cells = sum(r.n_cells for r in prefix)
        need = prefix_cells + max(sum(r.n_cells for r in rest) for rest in suffixes)
        if self.rt.reserve(need):  # a new, larger context: sequence 0 holds nothing yet
            self.reset()
        start = self.sync_prefix(prefix)
        results: list[np.ndarray | None] = [None] * len(runs)
        order = list(range(len(runs)))
        for g in range(0, len(order), self.rt.n_seq):
            self.eval_group(order[g : g + self.rt.n_seq], suffixes, start, results)
        return [r for r in results if r is not None]

    def sync_prefix(self, prefix: list[Run]) -> int:
        """Make sequence 0 hold exactly ``prefix``, reusing what it already holds."""
        keys = [r.key for r in prefix]
        m = common_prefix([self._prefix, keys])
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
                self._prefix_end = self.decode_run(r, self._prefix_end, seq=0)
        except BaseException:
            self.reset()
            raise
        self.stats.prefix_units_evaluated += len(prefix) - m
        return self._prefix_end

    def eval_group(
        self,
        group: list[int],
        suffixes: list[list[Run]],
        start: int,
        results: list[np.ndarray | None],
    ) -> None:
        rt = self.rt
        tails: list[tuple[int, int, int, tuple[int, ...]]] = []
        try:
            for j, i in enumerate(group):
                seq = j + 1
                *body, last = suffixes[i]
                pos = self.restore_or_decode(seq, start, body)
                pieces = piece_bounds(len(last.tokens), rt.n_batch, last.whole)
                for a, b in pieces[:-1]:
                    pos = self.decode_piece(last.tokens[a:b], pos, seq)
                a, b = pieces[-1]
                tails.append((i, seq, pos, last.tokens[a:b]))
            # The final pieces of the group's prompts share one batched decode.
            entries: list[tuple[int, int, int, bool]] = []
            owners: list[tuple[int, int]] = []
            for i, seq, pos, tail in tails:
                if entries and len(entries) + len(tail) > rt.n_batch:
                    self.decode_batch(entries, owners, results)
                    entries, owners = [], []
                entries.extend((t, pos + k, seq, k == len(tail) - 1) for k, t in enumerate(tail))
                owners.append((i, len(entries) - 1))
            self.decode_batch(entries, owners, results)
        finally:
            for j in range(len(group)):
                rt.seq_rm(j + 1)

    def restore_or_decode(self, seq: int, start: int, body: list[Run]) -> int:
        """Put prefix + ``body`` on ``seq``; returns the next position.

        With a state cache, the head through the body's first image, all its tiles (the query-independent part
        of a text -> image prompt: chat header + candidate image) is restored from a saved
        state when known, else decoded and saved; the rest of the body is decoded.
        """
        rt = self.rt
        images = [k for k, r in enumerate(body) if r.chunk is not None]
        if self.states is None or not images:
            rt.seq_cp(0, seq)
            pos = start
            for r in body:
                pos = self.decode_run(r, pos, seq)
            return pos
        cut = image_end(body, images[0], len(self.embeddings[body[images[0]].key[1]]))
        key = head_key([*self._prefix, *(r.key for r in body[:cut])])
        got = self.states.get(key)
        pos = None
        if got is not None:
            data, end = got
            rt.seq_rm(seq)
            if rt.state_seq_set(seq, data):
                pos = end
                self.stats.states_restored += 1
            else:
                rt.seq_rm(seq)
                self.states.drop(key)
        if pos is None:
            rt.seq_cp(0, seq)
            pos = start
            for r in body[:cut]:
                pos = self.decode_run(r, pos, seq)
            self.states.put(key, rt.state_seq_get(seq), pos)
            self.stats.states_saved += 1
        for r in body[cut:]:
            pos = self.decode_run(r, pos, seq)
        return pos

    def decode_batch(
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
            self.on_logits(i)  # one owner a decode when capturing

    def decode_run(self, run: Run, pos: int, seq: int) -> int:
        if run.chunk is not None:
            self.stats.image_runs_decoded += 1
            embd = self.embeddings[run.key[1]][run.key[2]]
            return self.rt.decode_image(run.chunk, embd, pos, seq)
        for a, b in piece_bounds(len(run.tokens), self.rt.n_batch, run.whole):
            pos = self.decode_piece(run.tokens[a:b], pos, seq)
        return pos

    def decode_piece(self, tokens: Sequence[int], pos: int, seq: int) -> int:
        self.rt.decode_tokens([(t, pos + k, seq, False) for k, t in enumerate(tokens)])
        return pos + len(tokens)
