"""Build a tiny random-weight Gemma3 vision-language checkout (Hugging Face layout).

Used by tests, benchmarks and smoke runs (``retllm quantize vlm --random-init``): it has
the real architecture, tokenizer files and chat template of Gemma3, so it goes through
llama.cpp's converter and runtime like a published checkpoint, in seconds.

Shape (see docs/rerank.md): text 6 layers, hidden 256, 4 heads / 2 KV heads of 64, a
512-piece SentencePiece BPE vocabulary trained here; vision SigLIP 2 layers, hidden 128,
64x64 images in 8x8 patches pooled to 16 tokens per image. Weight matrices are drawn
from N(0, 0.08) (the default 0.02 init gives flat, near-uniform outputs). The (tied)
embedding rows of "True" and "False" get ``answer_boost`` times the unit direction of the
"\n" embedding added: the answer position follows "<start_of_turn>model\n", whose
residual stream carries that direction, so both answers get substantial probability
(P(True) about 0.03-0.5) and their balance still depends on the query and candidate.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retllm_lite.quantize.tiny_checkout import reinit_weights, set_top_level_ids, staged_checkout

from retllm_lite.errors import BadInput, require

VOCAB_SIZE = 512


@dataclass(frozen=True)
class VisionShape:
    """Size of the tiny VLM's vision side (pixels, patches, image tokens, encoder depth)."""

    image_size: int = 64
    patch_size: int = 8
    tokens_per_image: int = 16
    layers: int = 2
    hidden: int = 128


TINY = VisionShape()
# Real Gemma 3 hands the text model 256 tokens per image: with this shape the fine stage's
# cost per pair has a real VLM's proportions (image tokens dominate), on tiny weights.
REAL_TOKEN_COUNT = VisionShape(image_size=256, patch_size=16, tokens_per_image=256, layers=4, hidden=256)

PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIAL_PIECES = [
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "\n",
    "\n\n",
]
# Words the answers are read from: each must end up a single piece.
ANSWER_WORDS = ["True", "False", "Yes", "No", *[str(d) for d in range(10)]]

# Gemma-style chat template (strings and typed content lists); llama.cpp recognises it by
# "<start_of_turn>" and renders the same text with its built-in Gemma formatter.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_VOCABULARY = """
a an the of in on with and or is are this that these image picture photo caption query
candidate does do match matches describe describes show shows same content answer
question which number only first second modified by relevant to text dog cat bird horse
car bus train boat plane bike tree flower house street beach mountain river sky city
park table chair cup book phone ball kite person man woman child red blue green yellow
black white small large old young running sitting standing flying eating playing near
under over next two three many snow grass water night day sunny cloudy
"""
_WORDS = _VOCABULARY.split()


def _corpus(rng: random.Random, n_lines: int = 3000) -> list[str]:
    lines = []
    for _ in range(n_lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 14))
        line = " ".join(words)
        line = line[0].upper() + line[1:]
        roll = rng.random()
        if roll < 0.35:
            line += f"? Answer True or False. {rng.choice(['True', 'False'])}"
        elif roll < 0.5:
            line += f"? {rng.choice(['Yes', 'No'])}."
        elif roll < 0.7:
            line = f"{rng.randint(0, 9)}: {line}. Answer {rng.randint(0, 9)}"
        lines.append(line + ".")
        # Answers and turn headers start a line (after "model\n"), with no space before.
        lines.append(rng.choice([*ANSWER_WORDS, "user", "model", "Query", "Caption"]))
    return lines


def _train_tokenizer(work: Path, seed: int) -> Path:
    spm = require("sentencepiece", "export", "Building the tiny test VLM")
    model_path = work / "tokenizer.model"
    # Trained from memory so the saved model holds no temporary paths: same seed, same bytes.
    with open(model_path, "wb") as writer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus(random.Random(seed))),
            model_writer=writer,
            model_type="bpe",
            vocab_size=VOCAB_SIZE,
            pad_id=PAD,
            eos_id=EOS,
            bos_id=BOS,
            unk_id=UNK,
            pad_piece="<pad>",
            eos_piece="<eos>",
            bos_piece="<bos>",
            unk_piece="<unk>",
            user_defined_symbols=SPECIAL_PIECES,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            split_digits=True,
            byte_fallback=True,
            character_coverage=1.0,
            minloglevel=2,
            num_threads=1,
        )
    proc = spm.SentencePieceProcessor(model_file=str(model_path))
    for word in ANSWER_WORDS:
        if len(proc.encode(word)) != 1:
            raise BadInput(f"tiny tokenizer (seed {seed}) splits '{word}'; pick another seed")
    return model_path


def _config(
    piece_id: dict[str, int], vision: VisionShape, shape: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The checkout's config; ``shape`` overrides top-level, text and vision entries (real shapes)."""
    cfg = _tiny_config(piece_id, vision)
    shape = shape or {}
    cfg.update(shape.get("top", {}))
    for part in ("text", "vision"):
        cfg[f"{part}_config"].update(shape.get(part, {}))
    return cfg


def _tiny_config(piece_id: dict[str, int], vision: VisionShape) -> dict[str, Any]:
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "boi_token_index": piece_id["<start_of_image>"],
        "eoi_token_index": piece_id["<end_of_image>"],
        "image_token_index": piece_id["<image_soft_token>"],
        "mm_tokens_per_image": vision.tokens_per_image,
        "text_config": {
            "model_type": "gemma3_text",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "query_pre_attn_scalar": 64,
            "sliding_window": 512,
            "max_position_embeddings": 4096,
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "pad_token_id": PAD,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": vision.hidden,
            "intermediate_size": 2 * vision.hidden,
            "num_hidden_layers": vision.layers,
            "num_attention_heads": 2,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "layer_norm_eps": 1e-6,
            "vision_use_head": False,
        },
    }


def _calibrate_answer_odds(model: Any, proc: Any, piece_id: dict[str, int], log_odds: float) -> None:
    """Move the (tied) "True" row so that log P(True)/P(False) is about ``log_odds`` at the answer.

    Shapes the output like a confident instruction-tuned model's (e.g. log 19: P(True) ~ 0.95
    of the True/False mass) on a representative text pair; image pairs land near it.
    """
    torch = require("torch", "export", "Building the tiny test VLM")
    prompt = (
        "<start_of_turn>user\nQuery: a red car\nCandidate: a dog on the beach\n"
        "Does the candidate match the query? Answer True or False.<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = torch.tensor([[BOS, *proc.encode(prompt)]])
    lm = model.model.language_model
    captured: dict[str, Any] = {}
    hook = lm.norm.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out[0, -1]))
    emb = model.get_input_embeddings().weight
    t, f = piece_id["True"], piece_id["False"]
    try:
        with torch.no_grad():
            for _ in range(4):  # "True" also appears in the prompt: a few fixed-point steps
                logits = model(input_ids=ids, token_type_ids=torch.zeros_like(ids)).logits[0, -1]
                h = captured["h"]
                delta = float(logits[t] - logits[f])
                emb[t] += (log_odds - delta) * h / h.dot(h)
    finally:
        hook.remove()


def build_tiny_gemma3(
    out_dir: str | Path,
    seed: int = 0,
    answer_boost: float = 2.0,
    vision: VisionShape = TINY,
    answer_log_odds: float | None = None,
    *,
    shape: dict[str, dict[str, Any]] | None = None,
    init_std: float = 0.08,
    dtype: str = "float32",
) -> Path:
    """Write a tiny random Gemma3 checkout to ``out_dir`` (created; must not exist or be empty).

    Deterministic for a given seed (tokenizer and weights). Returns ``out_dir``. Needs the
    ``export`` extra (torch, transformers 4.57, sentencepiece). ``vision`` sets the image
    side (``REAL_TOKEN_COUNT``: 256 tokens per image, as real Gemma 3, for benchmarks).
    ``answer_log_odds`` shapes the answer like a confident model's (``_calibrate_answer_odds``).
    ``shape`` (``real_shape.GEMMA3_4B``) gives it a published model's dimensions for honest
    speed and memory figures (its ``vision`` entries also set the processor's image size and
    the image token count); ``dtype`` is what the weights are built and saved in (a 4B model
    built in bfloat16 needs 9 GB instead of 17).
    """
    transformers = require("transformers", "export", "Building the tiny test VLM")
    torch = require("torch", "export", "Building the tiny test VLM")
    spm = require("sentencepiece", "export", "Building the tiny test VLM")

    with staged_checkout(out_dir, "tiny-gemma3") as (work, stage):
        tok_model = _train_tokenizer(work, seed)
        proc = spm.SentencePieceProcessor(model_file=str(tok_model))
        piece_id = {proc.id_to_piece(i): i for i in range(proc.get_piece_size())}

        if shape:
            vision = _vision_shape(shape)
        config = transformers.Gemma3Config(**_config(piece_id, vision, shape))
        torch.manual_seed(seed)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype))  # built in its dtype: no f32 copy
        try:
            model = transformers.Gemma3ForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(default_dtype)
        reinit_weights(
            model, seed, piece_id, answer_boost, anchor="\n", answers=("True", "False"), std=init_std
        )
        if answer_log_odds is not None:
            _calibrate_answer_odds(model, proc, piece_id, answer_log_odds)
        model.save_pretrained(stage, safe_serialization=True)

        shutil.copy(tok_model, stage / "tokenizer.model")
        _write_tokenizer_files(stage)
        _write_preprocessor(stage, vision)
        set_top_level_ids(stage, bos=BOS, eos=EOS, pad=PAD)
    return Path(out_dir)


def _vision_shape(shape: dict[str, dict[str, Any]]) -> VisionShape:
    """The processor's side of a real shape: image size, patch size, tokens per image."""
    v = shape["vision"]
    return VisionShape(
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        tokens_per_image=shape["top"]["mm_tokens_per_image"],
        layers=v["num_hidden_layers"],
        hidden=v["hidden_size"],
    )


def _write_tokenizer_files(stage: Path) -> None:
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    extra = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    added = {}
    for idx, piece in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *SPECIAL_PIECES]):
        added[str(idx)] = {
            "content": piece,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": not piece.startswith("\n"),
        }
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "spaces_between_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "sp_model_kwargs": {},
        "added_tokens_decoder": added,
        "extra_special_tokens": extra,
        "chat_template": CHAT_TEMPLATE,
        **specials,
        **extra,
    }
    (stage / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (stage / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _write_preprocessor(stage: Path, vision: VisionShape) -> None:
    pre = {
        "image_processor_type": "Gemma3ImageProcessor",
        "processor_class": "Gemma3Processor",
        "do_resize": True,
        "size": {"height": vision.image_size, "width": vision.image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "do_pan_and_scan": False,
        "image_seq_length": vision.tokens_per_image,
    }
    (stage / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    proc = {"processor_class": "Gemma3Processor", "image_seq_length": vision.tokens_per_image}
    (stage / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
