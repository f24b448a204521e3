"""Build a tiny random-weight Qwen2-VL checkout (Hugging Face layout) for tests.

The default reranker family: dynamic resolution (an image takes (h/28) x (w/28) tokens
after the processor's resize, 14-pixel patches merged 2 x 2), M-RoPE, ChatML with
Qwen2-VL's own chat template (default system prompt "You are a helpful assistant."),
``<|vision_start|>``/``<|image_pad|>``/``<|vision_end|>`` tokens, and a
``preprocessor_config.json`` for ``Qwen2VLImageProcessor``. It converts with llama.cpp's
converter like a published checkpoint (``convert_vlm``), in seconds.

Shape: text 2 layers, hidden 128, 2 heads / 1 KV head of 64, M-RoPE sections 8/12/12,
a 512-piece SentencePiece BPE vocabulary trained here (``tiny_spm``: the converter's
Qwen2-VL path reads ``tokenizer.model`` first; a ``tokenizer.json`` of an unknown
vocabulary stops at its pre-tokenizer hash check); vision 3 blocks (the converter needs
at least 3), width 32, 2 heads. Weights N(0, 0.08); the tied embedding rows of "True"
and "False" get ``answer_boost`` times the unit direction of "\\n" (the answer follows
"<|im_start|>assistant\\n"), so both answers get real probability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retllm_lite.quantize.tiny_checkout import reinit_weights, set_top_level_ids, staged_checkout
from retllm_lite.quantize.tiny_spm import ANSWER_WORDS, train_bpe

from retllm_lite.errors import require

VOCAB_SIZE = 512
PATCH_SIZE = 14
MERGE_SIZE = 2
UNK, EOS, PAD = 0, 1, 2  # <unk>, <|im_end|>, <|endoftext|>
SPECIAL_PIECES = [
    "<|im_start|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "\n",
]
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2-VL-2B-Instruct's chat template (tokenizer_config.json / chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _config(piece_id: dict[str, int], shape: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The checkout's config; ``shape`` overrides text / vision dimensions (real-shape builds)."""
    cfg = _tiny_config(piece_id)
    for part in ("text", "vision"):
        cfg[f"{part}_config"].update((shape or {}).get(part, {}))
    return cfg


def _tiny_config(piece_id: dict[str, int]) -> dict[str, Any]:
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "bos_token_id": PAD,
        "eos_token_id": EOS,
    }
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "bos_token_id": PAD,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "tie_word_embeddings": True,
        "vision_start_token_id": piece_id["<|vision_start|>"],
        "vision_end_token_id": piece_id["<|vision_end|>"],
        "vision_token_id": piece_id["<|vision_pad|>"],
        "image_token_id": piece_id["<|image_pad|>"],
        "video_token_id": piece_id["<|video_pad|>"],
        "text_config": text,
        "vision_config": {
            "depth": 3,
            "embed_dim": 32,
            "hidden_size": 128,  # the merger's output: the text model's width
            "hidden_act": "quick_gelu",
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_channels": 3,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
        },
    }


def build_tiny_qwen2vl(
    out_dir: str | Path,
    seed: int = 0,
    answer_boost: float = 2.0,
    *,
    shape: dict[str, dict[str, Any]] | None = None,
    init_std: float = 0.08,
    dtype: str = "float32",
) -> Path:
    """Write a tiny random Qwen2-VL checkout to ``out_dir`` (new or empty); returns it.

    Deterministic for a given seed. Needs the ``export`` extra (torch, transformers 4.57,
    sentencepiece). ``shape`` (``real_shape.QWEN2_VL_2B``) gives it a published model's
    dimensions for honest speed and memory figures; ``dtype`` is what the weights are saved in.
    """
    transformers = require("transformers", "export", "Building the tiny test VLM")
    torch = require("torch", "export", "Building the tiny test VLM")
    spm = require("sentencepiece", "export", "Building the tiny test VLM")

    with staged_checkout(out_dir, "tiny-qwen2vl") as (_work, stage):
        tok_model = stage / "tokenizer.model"
        train_bpe(
            tok_model,
            seed=seed,
            vocab_size=VOCAB_SIZE,
            specials=SPECIAL_PIECES,
            headers=["system", "user", "assistant", "Query", "Caption"],
            unk=(UNK, "<unk>"),
            eos=(EOS, "<|im_end|>"),
            pad=(PAD, "<|endoftext|>"),
            single_pieces=[*ANSWER_WORDS, " True", " False"],
        )
        proc = spm.SentencePieceProcessor(model_file=str(tok_model))
        piece_id = {proc.id_to_piece(i): i for i in range(proc.get_piece_size())}

        config = transformers.Qwen2VLConfig(**_config(piece_id, shape))
        torch.manual_seed(seed)
        model = transformers.Qwen2VLForConditionalGeneration(config).eval()
        reinit_weights(
            model, seed, piece_id, answer_boost, anchor="\n", answers=("True", "False"), std=init_std
        )
        model.to(getattr(torch, dtype)).save_pretrained(stage, safe_serialization=True)
        set_top_level_ids(stage, bos=PAD, eos=EOS, pad=PAD)
        _write_tokenizer_files(stage, proc)
        _write_preprocessor(stage)
    return Path(out_dir)


def _write_tokenizer_files(stage: Path, proc: Any) -> None:
    added = {}
    for piece in ["<unk>", "<|im_end|>", "<|endoftext|>", *SPECIAL_PIECES]:
        added[str(proc.piece_to_id(piece))] = {
            "content": piece,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": not piece.startswith("\n"),
        }
    specials = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "legacy": False,
        "sp_model_kwargs": {},
        "added_tokens_decoder": added,
        "additional_special_tokens": [p for p in SPECIAL_PIECES if not p.startswith("\n")],
        "chat_template": CHAT_TEMPLATE,
        **specials,
    }
    (stage / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (stage / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    (stage / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")


def _write_preprocessor(stage: Path) -> None:
    # Qwen2-VL-2B-Instruct's values; the authors' README budget (256..512 tokens) is
    # applied at run time (LlamaMtmdScorer max_image_tokens), as their processor's
    # min_pixels / max_pixels arguments do.
    pre = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 16384,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": MERGE_SIZE,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
    }
    (stage / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
