"""Build a tiny random-weight SmolVLM (Idefics3) checkout (Hugging Face layout) for tests.

SmolVLM's shape of things: a Llama text model behind ``Idefics3ForConditionalGeneration``
(text ``architectures`` ``VLlama3ForCausalLM``, as SmolVLM ships it), SmolVLM-Instruct's
chat template (typed content only; the generation prompt ends in ``Assistant:``, so the
answer token is " True"), and image tiling: mtmd resizes the longest edge to the
processor's ``size.longest_edge``, cuts tiles of the vision ``image_size`` and adds an
overview, each its own image chunk (``<fake_token_around_image><row_i_col_j>`` between them).

Shape: text 2 layers, hidden 64, 2 heads / 1 KV head; vision 2 layers, width 32, 32-pixel
tiles of 8-pixel patches, pixel shuffle 2: 4 tokens per tile; longest edge 64, so up to
2 x 2 tiles + the overview = 5 chunks per image. A 512-piece SentencePiece BPE vocabulary
(``tiny_spm``; ``add_prefix_space`` false, so llama.cpp tokenises text as written).
Weights N(0, 0.08); "True"/"False" embedding rows nudged along ":" (the answer follows
"Assistant:").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retllm_lite.quantize.tiny_checkout import reinit_weights, set_top_level_ids, staged_checkout
from retllm_lite.quantize.tiny_spm import ANSWER_WORDS, train_bpe

from retllm_lite.errors import require

VOCAB_SIZE = 512
TILE = 32
PATCH = 8
SCALE = 2
LONGEST_EDGE = 2 * TILE
UNK, BOS, EOS, PAD = 0, 1, 2, 3  # <unk>, <|im_start|>, <end_of_utterance>, <|endoftext|>


def _row_col(grid: int) -> list[str]:
    return [f"<row_{r}_col_{c}>" for r in range(1, grid + 1) for c in range(1, grid + 1)]


def _special_pieces(grid: int) -> list[str]:
    """Tile separators for up to ``grid`` x ``grid`` tiles (SmolVLM's tokenizer has them up to 6)."""
    return ["<fake_token_around_image>", "<image>", "<global-img>", *_row_col(grid), "\n", "\n\n"]


# HuggingFaceTB/SmolVLM-Instruct's chat template.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _config(piece_id: dict[str, int], shape: dict[str, Any] | None = None) -> dict[str, Any]:
    shape = shape or {}
    config = {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "model_type": "idefics3",
        "image_token_id": piece_id["<image>"],
        "scale_factor": SCALE,
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "tie_word_embeddings": True,
        "text_config": {
            "architectures": ["VLlama3ForCausalLM"],
            "model_type": "llama",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
            "pad_token_id": PAD,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
        },
        "vision_config": {
            "model_type": "idefics3_vision",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TILE,
            "patch_size": PATCH,
            "layer_norm_eps": 1e-6,
        },
    }
    # a published model's dimensions (real_shape.SMOLVLM_500M) over the tiny defaults
    config["text_config"].update(shape.get("text", {}))
    config["vision_config"].update(shape.get("vision", {}))
    config.update(shape.get("top", {}))
    config["text_config"]["tie_word_embeddings"] = config["tie_word_embeddings"]
    return config


def build_tiny_smolvlm(
    out_dir: str | Path,
    seed: int = 0,
    answer_boost: float = 2.0,
    *,
    shape: dict[str, Any] | None = None,
    init_std: float = 0.08,
    dtype: str = "float32",
) -> Path:
    """Write a tiny random SmolVLM (Idefics3) checkout to ``out_dir`` (new or empty); returns it.

    ``shape`` (``real_shape.SMOLVLM_500M``) gives it a published model's dimensions and image
    processor (``processor``: ``longest_edge``, ``tile``) for honest speed and memory figures;
    ``dtype`` is what the weights are saved in.
    """
    shape = shape or {}
    processor = {"longest_edge": LONGEST_EDGE, "tile": TILE, **shape.get("processor", {})}
    specials = _special_pieces(processor["longest_edge"] // processor["tile"])
    transformers = require("transformers", "export", "Building the tiny test VLM")
    torch = require("torch", "export", "Building the tiny test VLM")
    spm = require("sentencepiece", "export", "Building the tiny test VLM")

    with staged_checkout(out_dir, "tiny-smolvlm") as (_work, stage):
        tok_model = stage / "tokenizer.model"
        train_bpe(
            tok_model,
            seed=seed,
            vocab_size=VOCAB_SIZE,
            specials=specials,
            headers=["User", "Assistant", "Query", "Caption"],
            unk=(UNK, "<unk>"),
            bos=(BOS, "<|im_start|>"),
            eos=(EOS, "<end_of_utterance>"),
            pad=(PAD, "<|endoftext|>"),
            single_pieces=[*ANSWER_WORDS, " True", " False"],
        )
        proc = spm.SentencePieceProcessor(model_file=str(tok_model))
        piece_id = {proc.id_to_piece(i): i for i in range(proc.get_piece_size())}

        config = transformers.Idefics3Config(**_config(piece_id, shape))
        torch.manual_seed(seed)
        model = transformers.Idefics3ForConditionalGeneration(config).eval()
        reinit_weights(
            model,
            seed,
            piece_id,
            answer_boost,
            anchor=":",
            answers=("\u2581True", "\u2581False"),
            std=init_std,
        )
        model.to(getattr(torch, dtype)).save_pretrained(stage, safe_serialization=True)
        set_top_level_ids(stage, bos=BOS, eos=EOS, pad=PAD)
        _write_tokenizer_files(stage, proc, specials)
        _write_preprocessor(stage, processor, config.vision_config.patch_size, config.scale_factor)
    return Path(out_dir)


def _write_tokenizer_files(stage: Path, proc: Any, specials: list[str]) -> None:
    added = {}
    for piece in ["<unk>", "<|im_start|>", "<end_of_utterance>", "<|endoftext|>", *specials]:
        added[str(proc.piece_to_id(piece))] = {
            "content": piece,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": not piece.startswith("\n"),
        }
    specials = {
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
    }
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "sp_model_kwargs": {},
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        "chat_template": CHAT_TEMPLATE,
        **specials,
    }
    (stage / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (stage / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _write_preprocessor(stage: Path, processor: dict[str, int], patch: int, scale: int) -> None:
    pre = {
        "image_processor_type": "Idefics3ImageProcessor",
        "processor_class": "Idefics3Processor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": processor["longest_edge"]},
        "resample": 1,
        "do_image_splitting": True,
        "max_image_size": {"longest_edge": processor["tile"]},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
    }
    (stage / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    seq = (processor["tile"] // patch) ** 2 // scale**2
    (stage / "processor_config.json").write_text(
        json.dumps({"processor_class": "Idefics3Processor", "image_seq_len": seq}, indent=2) + "\n"
    )
