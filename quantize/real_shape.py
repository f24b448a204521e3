"""Random-weight VLMs with a published model's exact architecture, for speed and memory.

Speed and memory depend on shapes, not on weight values: a random model with the real
dimensions costs what the real one costs (its answers are meaningless). Used by
``benchmarks/rerank_real_shape.py``, never by the test suite (gigabytes).

``QWEN2_VL_2B``: Qwen/Qwen2-VL-2B-Instruct, from its ``config.json`` on the Hugging Face
Hub (and transformers' ``Qwen2VLConfig`` docs): text 28 layers, hidden 1536, FFN 8960,
12 attention heads / 2 KV heads (head dim 128), vocabulary 151936, tied embeddings,
M-RoPE sections 16/24/24, rope theta 1e6; vision 32 blocks, width 1280, 16 heads, MLP
ratio 4, QuickGELU, 14-pixel patches, 2 x 2 merge, temporal patch 2, merger output 1536.
About 2.21B parameters.

``SMOLVLM_500M``: HuggingFaceTB/SmolVLM-500M-Instruct (Idefics3): text SmolLM2-360M
(``HuggingFaceTB/SmolLM2-360M`` config.json: 32 layers, hidden 960, FFN 2560, 15 heads /
5 KV heads (head dim 64), rope theta 1e5) with SmolVLM's 49280-entry vocabulary and an
untied output head (the published Q8_0 text GGUF, ggml-org/SmolVLM-500M-Instruct-GGUF, is
436,806,912 bytes: about 409M weights, which only an untied head gives); vision SigLIP
base-patch16-512 (12 layers, width 768, FFN 3072, 12 heads, 16-pixel patches, 512-pixel
tiles), pixel shuffle 4 (64 tokens a tile); processor longest edge 2048 (4 x 512) with
512-pixel tiles, so a photo costs a 4 x 4 grid of tiles plus an overview: 17 x 64 = 1088
image tokens. About 507M parameters.

``GEMMA3_4B``: google/gemma-3-4b-it, from its ``config.json`` on the Hugging Face Hub (the
keys it sets) and transformers' ``Gemma3TextConfig`` defaults (the ones it leaves out): text
34 layers, hidden 2560, FFN 10240, 8 attention heads / 4 KV heads of 256 (query scale
256), vocabulary 262208, tied embeddings, sliding window 1024 on five layers of six, rope
theta 1e6 (global layers, linear scaling 8) and 1e4 (local); vision SigLIP so400m-patch14
(27 layers, width 1152, FFN 4304, 16 heads, 14-pixel patches) at 896 x 896 pixels, its
4096 patches average-pooled to ``mm_tokens_per_image`` 256, whatever the photo's size.
About 4.30B parameters; the published Q4_K_M text GGUF (ggml-org/gemma-3-4b-it-GGUF) is
2.49 GB and its f16 projector 851 MB.

The tokenizer stays the tiny builders' 512-piece one (the converter pads the vocabulary to
the model's size), which does not change any matrix shape.
"""

from __future__ import annotations

from pathlib import Path

QWEN2_VL_2B = {
    "text": {
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    },
    "vision": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 1536,
        "mlp_ratio": 4,
        "num_heads": 16,
    },
}

SMOLVLM_500M = {
    "top": {"scale_factor": 4, "tie_word_embeddings": False},
    "text": {
        "vocab_size": 49280,
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "rope_theta": 100000.0,
    },
    "vision": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    },
    "processor": {"longest_edge": 2048, "tile": 512},
}

GEMMA3_4B = {
    "top": {"mm_tokens_per_image": 256},
    "text": {
        "vocab_size": 262208,
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "sliding_window": 1024,
        "max_position_embeddings": 131072,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    },
    "vision": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 896,
        "patch_size": 14,
    },
}

SHAPES = {"qwen2-vl-2b": QWEN2_VL_2B, "smolvlm-500m": SMOLVLM_500M, "gemma-3-4b": GEMMA3_4B}


def build_real_shape(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight checkout of ``name``'s exact architecture (bf16 safetensors)."""
    from retllm_lite.quantize.tiny_qwen2vl import build_tiny_qwen2vl
    from retllm_lite.quantize.tiny_smolvlm import build_tiny_smolvlm
    from retllm_lite.quantize.tiny_vlm import build_tiny_gemma3

    builders = {
        "qwen2-vl-2b": build_tiny_qwen2vl,
        "smolvlm-500m": build_tiny_smolvlm,
        "gemma-3-4b": build_tiny_gemma3,
    }
    if name not in SHAPES:
        raise KeyError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    # std 0.02 (transformers' initializer_range): keeps dozens of layers' activations finite
    return builders[name](out_dir, seed=seed, shape=SHAPES[name], init_std=0.02, dtype="bfloat16")
