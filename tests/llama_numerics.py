"""transformers' Gemma3 and Qwen2-VL with llama.cpp's f32-path numerics, for tight parity checks.

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

Qwen2-VL (``emulate_llama_cpp_qwen2vl``; docs/rerank.md): the conv3d patch embedding is two
``ggml_conv_2d`` (one per temporal slice, added), so f16 im2col again; the vision MLPs'
QuickGELU goes through another f16 table (``GGML_GELU_QUICK_FP16``: ``f16(quick_gelu(f16(x)))``,
no clamp); the merger's GELU is ``ggml_gelu`` (``FFN_GELU``), i.e. the tanh-GELU f16 table
where transformers uses the exact erf GELU. The converter keeps every Qwen2-VL projector
tensor in the output type, and the Qwen2 text model's SwiGLU is computed in f32. Image
preprocessing differs too: mtmd resizes to the same ``smart_resize`` size but keeps the
aspect ratio and pads with black (``PAD_CEIL``, centred) where transformers stretches;
``mtmd_letterbox`` does what mtmd does, with Pillow's bicubic (mtmd's resize is Pillow's).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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


class TableQuickGelu(torch.nn.Module):
    """ggml's QuickGELU with ``GGML_GELU_QUICK_FP16``: ``f16(x * sigmoid(1.702 x))`` of ``f16(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = f16(x)
        return f16(h * torch.sigmoid(1.702 * h))


def _conv3d_with_f16_im2col(conv: torch.nn.Conv3d):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(f16(x), f16(conv.weight), conv.bias, conv.stride, conv.padding)

    return forward


QWEN2VL_PARTS = ("im2col", "vision-gelu", "merger-gelu")


def emulate_llama_cpp_qwen2vl(model, parts: tuple[str, ...] = QWEN2VL_PARTS):
    """A copy of a ``Qwen2VLForConditionalGeneration`` computing as llama.cpp's CPU backend does."""
    unknown = set(parts) - set(QWEN2VL_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {QWEN2VL_PARTS}")
    model = copy.deepcopy(model)
    visual = model.model.visual
    if "im2col" in parts:
        conv = visual.patch_embed.proj
        conv.forward = _conv3d_with_f16_im2col(conv)
    if "vision-gelu" in parts:
        for block in visual.blocks:
            block.mlp.act = TableQuickGelu()
    if "merger-gelu" in parts:
        act = visual.merger.mlp[1]
        if not isinstance(act, torch.nn.GELU):
            raise ValueError(f"expected the merger's GELU, found {act}")
        visual.merger.mlp[1] = TableGelu()
    return model


def mtmd_letterbox(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture mtmd's Qwen2-VL preprocessing encodes at ``size`` (w, h): fit, pad black, centre."""
    w, h = size
    if image.size == (w, h):
        return image
    f32 = np.float32  # mtmd computes the scale in float
    scale = min(f32(w) / f32(image.width), f32(h) / f32(image.height))
    nw = min(math.ceil(f32(image.width) * scale), w)
    nh = min(math.ceil(f32(image.height) * scale), h)
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    canvas.paste(image.resize((nw, nh), Image.Resampling.BICUBIC), ((w - nw) // 2, (h - nh) // 2))
    return canvas
