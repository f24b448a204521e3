"""A tiny CLIP in the Hugging Face / Transformers.js layout, for the download tests.

The files a ready-made ONNX CLIP repository holds (config.json, preprocessor_config.json,
tokenizer.json, onnx/vision_model*.onnx, onnx/text_model*.onnx), small enough to serve
from the stand-in hub. The towers are real ONNX graphs that onnxruntime runs: the image
tower average-pools the pixels to a 4x4 grid and projects it (``image_embeds``), the text
tower averages token embeddings under the attention mask (``text_embeds``).
"""

from __future__ import annotations

import json

import numpy as np

DIM = 8
CONTEXT = 16
WORDS = ["a", "an", "the", "photo", "of", "dog", "cat", "car", "red", "blue", "green", "beach"]


def _image_tower(seed: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 1, (48, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[56, 56], strides=[56, 56]
            ),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["image_embeds"]),
        ],
        "vision_model",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _text_tower(vocab: int, seed: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb = np.random.default_rng(seed).normal(0, 1, (vocab, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["tokens"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["text_embeds"], keepdims=0),
        ],
        "text_model",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", DIM])],
        [
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _tokenizer_json() -> tuple[bytes, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "[UNK]": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str().encode(), len(vocab)


def tiny_hf_clip_files(seed: int = 0) -> dict[str, bytes]:
    """Repository path -> bytes, named as in Xenova/clip-vit-base-patch32."""
    tokenizer, vocab = _tokenizer_json()
    image, text = _image_tower(seed), _text_tower(vocab, seed + 1)
    config = {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": DIM,
        "text_config": {"max_position_embeddings": CONTEXT, "model_type": "clip_text_model"},
        "vision_config": {"image_size": 224, "patch_size": 32, "model_type": "clip_vision_model"},
    }
    preprocessor = {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 224},
    }
    return {
        "config.json": json.dumps(config).encode(),
        "preprocessor_config.json": json.dumps(preprocessor).encode(),
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": json.dumps({"pad_token": "<|endoftext|>"}).encode(),
        "onnx/vision_model.onnx": image,
        "onnx/text_model.onnx": text,
        "onnx/vision_model_quantized.onnx": image,
        "onnx/text_model_quantized.onnx": text,
        "README.md": b"tiny test model\n",
    }
