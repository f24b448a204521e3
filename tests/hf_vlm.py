"""transformers on the prompts the llama.cpp scorer decodes: the reference path.

``LlamaMtmdScorer.layout`` gives a pair's prompt as segments: text token ids (llama.cpp's
tokenizer, which has the checkout's ids) and image chunks with their token counts.
transformers gets the same ids, each image chunk's slots filled with the model's image token,
and pixel values from the checkout's own image processor, so both runtimes see one prompt.
Used by the parity tests (``vlm_fixtures``) and by ``benchmarks/rerank_real_shape.py`` (the
CPU reference the paper's code takes: one transformers forward per pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def prompt_ids(segments: Sequence[Any], image_token: int) -> tuple[list[int], list[int]]:
    """Token ids with each image chunk's slots as ``image_token``, and each chunk's count."""
    ids: list[int] = []
    counts: list[int] = []
    for seg in segments:
        if seg.kind == "text":
            ids += seg.tokens
        else:
            ids += [image_token] * seg.n_tokens
            counts.append(seg.n_tokens)
    return ids, counts


class HFReference:
    """A transformers VLM checkout run on llama.cpp prompt layouts: next-token probabilities.

    ``kind`` is "qwen2vl", "idefics3" (SmolVLM) or "gemma3" (image tokens marked by
    ``token_type_ids``, which Gemma 3 attends over both ways). For Qwen2-VL, ``min_tokens`` /
    ``max_tokens`` set the processor's pixel budget to the scorer's image-token budget
    (tokens x 28 x 28), so both cut an image into the same grid.

    Idefics3 tile positions: transformers 4.57 computes a patch's fractional coordinate as
    ``i / n * (1 - 1e-6)`` and buckets it with ``right=True``, which puts patch i > 0 in
    bucket i - 1 (position ids 0, 0, 1, 2, ... per row: measured on the tiny checkout).
    Earlier transformers releases, which SmolVLM was trained with, and llama.cpp give patch i
    position i. ``idefics3_positions="identity"`` (default) restores that for full tiles;
    ``"transformers"`` keeps 4.57's.
    """

    def __init__(
        self,
        checkout: str | Path,
        kind: str,
        *,
        dtype: str = "float32",
        min_tokens: int | None = None,
        max_tokens: int | None = None,
        model: Any = None,
        idefics3_positions: str = "identity",
    ):
        import torch
        import transformers

        self.kind = kind
        self.torch = torch
        cls = {
            "qwen2vl": transformers.Qwen2VLForConditionalGeneration,
            "idefics3": transformers.Idefics3ForConditionalGeneration,
            "gemma3": transformers.Gemma3ForConditionalGeneration,
        }[kind]
        self.model = model or cls.from_pretrained(checkout, dtype=getattr(torch, dtype)).eval()
        kwargs: dict[str, Any] = {}
        if kind == "qwen2vl" and max_tokens:
            kwargs = {"min_pixels": (min_tokens or 4) * 28 * 28, "max_pixels": max_tokens * 28 * 28}
        self.processor = transformers.AutoImageProcessor.from_pretrained(checkout, use_fast=False, **kwargs)
        config = self.model.config
        self.image_token = config.image_token_index if kind == "gemma3" else config.image_token_id
        if kind == "idefics3" and idefics3_positions == "identity":
            _identity_tile_positions(self.model.model.vision_model.embeddings, torch)

    def inputs(self, segments: Sequence[Any], images: Sequence[Any]) -> dict[str, Any]:
        """Model inputs for one prompt: ``images`` in prompt order, one per image (not chunk)."""
        torch = self.torch
        ids, counts = prompt_ids(segments, self.image_token)
        input_ids = torch.tensor([ids])
        out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        gemma = self.kind == "gemma3"
        if gemma:
            types = [int(i == self.image_token) for i in ids]
            out["token_type_ids"] = torch.tensor([types])
        if not images:
            return out
        if gemma:
            pix = [self.processor(images=im, return_tensors="pt")["pixel_values"] for im in images]
            out["pixel_values"] = torch.cat(pix)
            return out
        # Idefics3 takes one list of images per sample (its tiles stacked in one row)
        batch = list(images) if self.kind == "qwen2vl" else [list(images)]
        pix = self.processor(images=batch, return_tensors="pt")
        if self.kind == "qwen2vl":
            grid = pix["image_grid_thw"]
            merge = self.processor.merge_size
            have = [int(g.prod()) // merge**2 for g in grid]
            assert have == counts, (have, counts)
            out.update(pixel_values=pix["pixel_values"], image_grid_thw=grid)
        else:
            # one chunk a tile (+ the overview); the processor stacks every image's tiles
            tiles = int(pix["pixel_attention_mask"].shape[1])
            assert tiles == len(counts), (tiles, counts)
            out.update(pixel_values=pix["pixel_values"], pixel_attention_mask=pix["pixel_attention_mask"])
        return out

    def probs(self, segments: Sequence[Any], images: Sequence[Any], **kwargs: Any) -> Any:
        """Next-token probabilities (float64 numpy) after the prompt."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(**self.inputs(segments, images), **kwargs)
        return torch.softmax(out.logits[0, -1].double(), dim=-1).numpy()


def _identity_tile_positions(embeddings: Any, torch: Any) -> None:
    """Idefics3 vision embeddings with position i for patch i (full tiles only)."""

    def forward(pixel_values: Any, patch_attention_mask: Any) -> Any:
        assert bool(patch_attention_mask.all()), "identity positions are for full tiles"
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        ids = torch.arange(patches.shape[1])
        return patches + embeddings.position_embedding(ids)[None]

    embeddings.forward = forward
