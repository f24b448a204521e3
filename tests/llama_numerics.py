"""transformers' Gemma3 with llama.cpp's documented f32-path numerics, for tight parity checks.

An f32 GGUF with an f32 projector is not an all-f32 computation in llama.cpp. Three places
round to f16 by design (llama-cpp-python 0.3.36's vendored llama.cpp; measured on the tiny
Gemma3, see docs/rerank.md "Parity with transformers"):

- ``ggml_conv_2d`` builds its im2col in f16 (``ggml.c``: ``ggml_im2col(..., GGML_TYPE_F16)``
  unless the kernel is bf16), so the vision patch embedding multiplies f16 pixels by f16
  weights; upstream's deepseekocr graph works around the same thing.
- GELU goes through a 64k-entry f16 table (``GGML_GELU_FP16`` in ``ggml-cpu/vec.h``):
  ``y = f16(gelu_tanh(f16(x)))``, 0 for ``x <= -10`` and ``x`` for ``x >= 10``, in the vision
  MLPs (``ggml_gelu``) and the text MLPs (``ggml_geglu``: the table value times the up branch).
- llama.cpp's converter stores Gemma3's ``mm_input_projection`` in f16 whatever the output
  type (``conversion/gemma.py``), and an f16 weight makes ``mul_mat`` round its input to f16.

``emulate_llama_cpp`` applies exactly these to a copy of the model; everything else stays f32.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


def f16(x: torch.Tensor) -> torch.Tensor:
    """Round to half precision and back (round to nearest even, as F16C does)."""
    return x.to(torch.float16).to(x.dtype)


class TableGelu(torch.nn.Module):
    """ggml's GELU with ``GGML_GELU_FP16``: an f16 lookup of tanh-GELU, clamped outside ±10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = f16(F.gelu(f16(x), approximate="tanh"))
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


def _conv_with_f16_im2col(conv: torch.nn.Conv2d):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(f16(x), f16(conv.weight), conv.bias, conv.stride, conv.padding)

    return forward


PARTS = ("im2col", "vision-gelu", "text-gelu", "projector")


def emulate_llama_cpp(model, parts: tuple[str, ...] = PARTS):
    """A copy of a ``Gemma3ForConditionalGeneration`` computing as llama.cpp's CPU backend does.

    ``parts`` picks which roundings to apply (all by default), to measure each one's share.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    model = copy.deepcopy(model)
    inner = model.model
    vision = inner.vision_tower.vision_model
    gelu = TableGelu()
    if "im2col" in parts:
        conv = vision.embeddings.patch_embedding
        conv.forward = _conv_with_f16_im2col(conv)
    if "vision-gelu" in parts:
        for layer in vision.encoder.layers:
            layer.mlp.activation_fn = gelu
    if "text-gelu" in parts:
        for layer in inner.language_model.layers:
            layer.mlp.act_fn = gelu
    if "projector" in parts:
        proj = inner.multi_modal_projector
        with torch.no_grad():
            proj.mm_input_projection_weight.copy_(f16(proj.mm_input_projection_weight))
        # the norm's output is the projection's input: f16 in llama.cpp's mul_mat
        proj.mm_soft_emb_norm.register_forward_hook(lambda _m, _inp, out: f16(out))
    return model
