"""Session fixtures: tiny random Gemma3, Qwen2-VL and SmolVLM VLMs converted to GGUF.

Built once per pytest session: the HF checkouts (``build_tiny_gemma3``,
``build_tiny_qwen2vl``, ``build_tiny_smolvlm``), llama.cpp's converter for the installed
llama-cpp-python (from its sdist; set ``RETLLM_TEST_CONVERTER_DIR`` to keep the extracted
converter between sessions), and conversions through ``convert_vlm``: Gemma3 f32 (+ f32
projector, for parity with transformers), f16 (+ f16 projector) and q8_0 (+ q8_0
projector); Qwen2-VL f32 (+ f32 projector, for parity) and f16 (+ f16 projector), SmolVLM f16 + f16.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLORS = [
    (220, 40, 40), (40, 160, 60), (40, 70, 200), (230, 200, 40), (150, 60, 170),
    (30, 30, 30), (240, 240, 240), (240, 130, 30), (90, 200, 210), (120, 80, 40),
]  # fmt: skip

CAPTIONS = [
    "a dog running on the beach",
    "two cats sitting under a tree",
    "a red car parked on the street",
    "a man riding a horse near the river",
    "blue sky over a large city",
    "a small yellow bird flying over grass",
    "a child playing with a ball in the park",
    "a white boat on the water at night",
]


def scene(index: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A deterministic synthetic picture: background, a shape and a stripe, by index."""
    w, h = size
    bg = COLORS[index % len(COLORS)]
    fg = COLORS[(index * 3 + 1) % len(COLORS)]
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    x0, y0 = (index * 7) % (w // 2), (index * 11) % (h // 2)
    box = (x0, y0, x0 + w // 2, y0 + h // 2)
    if index % 3 == 0:
        draw.ellipse(box, fill=fg)
    elif index % 3 == 1:
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([(x0, y0 + h // 2), (x0 + w // 4, y0), (x0 + w // 2, y0 + h // 2)], fill=fg)
    stripe = COLORS[(index * 5 + 2) % len(COLORS)]
    draw.rectangle((0, h - 6 - index % 8, w, h - 1 - index % 5), fill=stripe)
    return img


def photo(size: tuple[int, int], index: int = 0) -> Image.Image:
    """A scene at a real photo's size (e.g. 4000 x 3000): the 64 x 64 scene scaled up."""
    return scene(index).resize(size, Image.Resampling.BILINEAR)


@pytest.fixture(scope="session")
def vlm_images() -> list[Image.Image]:
    return [scene(i) for i in range(10)]


@pytest.fixture(scope="session")
def vlm_captions() -> list[str]:
    return list(CAPTIONS)


@pytest.fixture(scope="session")
def vlm_converter(tmp_path_factory):
    from retllm_lite.quantize.converter import get_converter

    root = os.environ.get("RETLLM_TEST_CONVERTER_DIR") or tmp_path_factory.mktemp("converters")
    return get_converter(root=root)


@pytest.fixture(scope="session")
def tiny_vlm_hf(tmp_path_factory) -> Path:
    from retllm_lite.quantize.tiny_vlm import build_tiny_gemma3

    return build_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3") / "hf")


def _convert(hf: Path, converter, tmp_path_factory, text_type: str, mmproj_type: str,
             name: str = "tiny-gemma3"):  # fmt: skip
    from retllm_lite.quantize.vlm import convert_vlm

    from retllm_lite.rerank.manifest import read_manifest

    out = tmp_path_factory.mktemp(f"vlm-{name}-{text_type}") / "model"
    convert_vlm(hf, out, text_type=text_type, mmproj_type=mmproj_type, converter=converter,
                name=name, n_threads=1)  # fmt: skip
    return read_manifest(out)


@pytest.fixture(scope="session")
def tiny_vlm_f32(tiny_vlm_hf, vlm_converter, tmp_path_factory):
    return _convert(tiny_vlm_hf, vlm_converter, tmp_path_factory, "f32", "f32")


@pytest.fixture(scope="session")
def tiny_vlm_f16(tiny_vlm_hf, vlm_converter, tmp_path_factory):
    return _convert(tiny_vlm_hf, vlm_converter, tmp_path_factory, "f16", "f16")


@pytest.fixture(scope="session")
def tiny_vlm_q8(tiny_vlm_hf, vlm_converter, tmp_path_factory):
    return _convert(tiny_vlm_hf, vlm_converter, tmp_path_factory, "q8_0", "q8_0")


@pytest.fixture(scope="session")
def confident_scorer(vlm_converter, tmp_path_factory):
    """The tiny Gemma3 with its answer shaped like a confident instruction-tuned model's.

    Same seed and weights, but the "True" row moved so that log P(True)/P(False) is about
    4.5 at the answer position (measured: q = P(True)/(P(True)+P(False)) 0.81-0.97 on the
    test pairs), with the True/False mass near 1 as after a real model's chat template.
    """
    from retllm_lite.quantize.tiny_vlm import build_tiny_gemma3

    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer

    hf = build_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3-confident") / "hf", answer_log_odds=4.5)
    files = _convert(hf, vlm_converter, tmp_path_factory, "f16", "f16")
    scorer = LlamaMtmdScorer(files.model, files.mmproj, n_threads=1)
    yield scorer
    scorer.close()


@pytest.fixture(scope="session")
def tiny_qwen2vl_hf(tmp_path_factory) -> Path:
    from retllm_lite.quantize.tiny_qwen2vl import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl") / "hf")


@pytest.fixture(scope="session")
def tiny_qwen2vl(tiny_qwen2vl_hf, vlm_converter, tmp_path_factory):
    """Tiny Qwen2-VL, f16 text model and projector (dynamic resolution, M-RoPE, ChatML)."""
    return _convert(tiny_qwen2vl_hf, vlm_converter, tmp_path_factory, "f16", "f16", name="tiny-qwen2vl")


@pytest.fixture(scope="session")
def tiny_smolvlm_hf(tmp_path_factory) -> Path:
    from retllm_lite.quantize.tiny_smolvlm import build_tiny_smolvlm

    return build_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm") / "hf")


@pytest.fixture(scope="session")
def tiny_smolvlm(tiny_smolvlm_hf, vlm_converter, tmp_path_factory):
    """Tiny SmolVLM (Idefics3), f16 + f16: tiled images (up to 2 x 2 tiles + overview)."""
    return _convert(tiny_smolvlm_hf, vlm_converter, tmp_path_factory, "f16", "f16", name="tiny-smolvlm")


@pytest.fixture(scope="session")
def smolvlm_f32_scorer(tiny_smolvlm_hf, vlm_converter, tmp_path_factory):
    """Tiny SmolVLM, f32 text model, projector and KV cache: for parity with transformers."""
    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer

    files = _convert(tiny_smolvlm_hf, vlm_converter, tmp_path_factory, "f32", "f32", name="tiny-smolvlm")
    scorer = LlamaMtmdScorer(files.model, files.mmproj, kv_type="f32", n_threads=1)
    yield scorer
    scorer.close()


@pytest.fixture(scope="session")
def smolvlm_hf_reference(tiny_smolvlm_hf):
    """transformers' Idefics3 (f32) on given llama.cpp layouts and images (``hf_vlm.HFReference``):
    ``{"identity": ..., "transformers": ...}`` by tile positions (see ``HFReference``)."""
    from hf_vlm import HFReference

    return {pos: HFReference(tiny_smolvlm_hf, "idefics3", idefics3_positions=pos).probs
            for pos in ("identity", "transformers")}  # fmt: skip


@pytest.fixture(scope="session")
def f16_scorer(tiny_vlm_f16):
    """One shared f16 scorer, defaults (candidates one at a time, bit-identical to naive).

    One thread: other jobs share these 2 cores, and a 2-thread barrier stalls when one
    core is taken (results do not depend on the thread count).
    """
    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer

    scorer = LlamaMtmdScorer(tiny_vlm_f16.model, tiny_vlm_f16.mmproj, n_threads=1)
    yield scorer
    scorer.close()


@pytest.fixture(scope="session")
def f32_batched_scorer(tiny_vlm_f32):
    """f32 weights, projector and KV cache; 3 candidates per batched decode."""
    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer

    scorer = LlamaMtmdScorer(tiny_vlm_f32.model, tiny_vlm_f32.mmproj, kv_type="f32",
                             batch_size=3, n_ctx=1024, n_threads=1)  # fmt: skip
    yield scorer
    scorer.close()


@pytest.fixture(scope="session")
def hf_forward(tiny_vlm_hf):
    """transformers forward pass on given llama.cpp token ids and images -> the model output.

    ``forward(segments, images, numerics="torch", **kwargs)``: plain f32 transformers; with
    ``numerics="llama.cpp"``, the same model with llama.cpp's f16 roundings emulated
    (``llama_numerics.emulate_llama_cpp``). ``forward.models`` holds both.
    """
    import torch
    from transformers import Gemma3ForConditionalGeneration

    from hf_vlm import HFReference
    from llama_numerics import emulate_llama_cpp

    model = Gemma3ForConditionalGeneration.from_pretrained(tiny_vlm_hf, dtype=torch.float32).eval()
    models = {"torch": model, "llama.cpp": emulate_llama_cpp(model).eval()}
    reference = HFReference(tiny_vlm_hf, "gemma3", model=model)  # the prompt's inputs

    def forward(segments, images, numerics: str = "torch", **kwargs):
        with torch.no_grad():
            return models[numerics](**reference.inputs(segments, images), **kwargs)

    forward.models = models
    return forward


@pytest.fixture(scope="session")
def hf_reference(hf_forward):
    """Next-token probabilities of ``hf_forward`` at the last position."""
    import torch

    def probs(segments, images, numerics: str = "torch"):
        out = hf_forward(segments, images, numerics)
        return torch.softmax(out.logits[0, -1].double(), dim=-1).numpy()

    return probs


@pytest.fixture(scope="session")
def tiny_qwen2vl_f32(tiny_qwen2vl_hf, vlm_converter, tmp_path_factory):
    """Tiny Qwen2-VL, f32 text model and f32 projector: for parity with transformers."""
    return _convert(tiny_qwen2vl_hf, vlm_converter, tmp_path_factory, "f32", "f32", name="tiny-qwen2vl")


@pytest.fixture(scope="session")
def qwen2vl_f32_scorer(tiny_qwen2vl_f32):
    """f32 weights, projector and KV cache; the default image budget (256..512 tokens)."""
    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer

    scorer = LlamaMtmdScorer(tiny_qwen2vl_f32.model, tiny_qwen2vl_f32.mmproj, kv_type="f32", n_threads=1)
    yield scorer
    scorer.close()


@pytest.fixture(scope="session")
def qwen2vl_hf_reference(tiny_qwen2vl_hf, qwen2vl_f32_scorer):
    """transformers' Qwen2-VL on given llama.cpp token ids and images -> next-token probabilities.

    ``probs(segments, images, numerics="torch", preprocess="mtmd", positions="mrope")``:
    input_ids with ``<|image_pad|>`` repeated per image chunk, pixel_values and
    image_grid_thw from the checkout's ``Qwen2VLImageProcessor`` with the scorer's budget
    (min/max pixels = tokens x 28 x 28). ``numerics="llama.cpp"``: llama.cpp's f16 roundings
    emulated (``llama_numerics.emulate_llama_cpp_qwen2vl``). ``preprocess="mtmd"`` hands the
    processor each picture letterboxed as mtmd does (``mtmd_letterbox``; the processor then
    does not resize), ``"transformers"`` the picture itself (stretched by the processor).
    ``positions="1d"`` replaces M-RoPE's positions by 0, 1, 2, ... on all three axes: what a
    scorer that loses the image's 2-D positions would compute. Each image chunk's token
    count must equal the processor's grid (t x h x w / merge^2), for both preprocessings.
    """
    import torch
    from transformers import AutoImageProcessor, Qwen2VLForConditionalGeneration

    from hf_vlm import prompt_ids
    from llama_numerics import emulate_llama_cpp_qwen2vl, mtmd_letterbox

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2vl_hf, dtype=torch.float32).eval()
    models = {"torch": model, "llama.cpp": emulate_llama_cpp_qwen2vl(model).eval()}
    rt = qwen2vl_f32_scorer.rt
    processor = AutoImageProcessor.from_pretrained(tiny_qwen2vl_hf, use_fast=False,
                                                   min_pixels=rt.min_image_tokens * 28 * 28,
                                                   max_pixels=rt.max_image_tokens * 28 * 28)  # fmt: skip
    merge = processor.merge_size
    image_token = model.config.image_token_id

    def probs(segments, images, numerics: str = "torch", preprocess: str = "mtmd", positions: str = "mrope"):
        ids, counts = prompt_ids(segments, image_token)
        assert len(counts) == len(images)
        own = processor(images=images, return_tensors="pt")
        grid = own["image_grid_thw"]
        assert [int(g.prod()) // merge**2 for g in grid] == counts, (grid.tolist(), counts)
        if preprocess == "mtmd":
            sizes = [(int(w) * processor.patch_size, int(h) * processor.patch_size) for _, h, w in grid]
            boxed = [mtmd_letterbox(im, size) for im, size in zip(images, sizes, strict=True)]
            inputs = processor(images=boxed, return_tensors="pt")
            assert torch.equal(inputs["image_grid_thw"], grid)
        else:
            inputs = own
        input_ids = torch.tensor([ids])
        kwargs = {}
        if positions == "1d":
            kwargs["position_ids"] = torch.arange(len(ids)).expand(3, 1, -1)
        with torch.no_grad():
            out = models[numerics](
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=inputs["pixel_values"],
                image_grid_thw=grid,
                **kwargs,
            )
        return torch.softmax(out.logits[0, -1].double(), dim=-1).numpy()

    probs.models = models
    return probs
