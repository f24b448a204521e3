"""Random-weight VLMs with a published model's exact architecture, for speed and memory.

Speed and memory depend on shapes, not on weight values: a random model with the real
dimensions costs what the real one costs (its answers are meaningless). Used by
``benchmarks/rerank_real_shape.py``, never by the test suite (gigabytes).

``QWEN2_VL_2B``: Qwen/Qwen2-VL-2B-Instruct, from its ``config.json`` on the Hugging Face
Hub (and transformers' ``Qwen2VLConfig`` docs): text 28 layers, hidden 1536, FFN 8960,
12 attention heads / 2 KV heads (head dim 128), vocabulary 151936, tied embeddings,
M-RoPE sections 16/24/24, rope theta 1e6; vision 32 blocks, width 1280, 16 heads, MLP
ratio 4, QuickGELU, 14-pixel patches, 2 x 2 merge, temporal patch 2, merger output 1536.
About 2.21B parameters. The tokenizer stays the tiny builder's 512-piece one (the
converter pads the vocabulary to 151936), which does not change any matrix shape.
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

SHAPES = {"qwen2-vl-2b": QWEN2_VL_2B}


def build_real_shape(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A random-weight checkout of ``name``'s exact architecture (bf16 safetensors)."""
    from retllm_lite.quantize.tiny_qwen2vl import build_tiny_qwen2vl

    if name not in SHAPES:
        raise KeyError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    # std 0.02 (transformers' initializer_range): keeps 28 layers of activations finite
    return build_tiny_qwen2vl(out_dir, seed=seed, shape=SHAPES[name], init_std=0.02, dtype="bfloat16")
