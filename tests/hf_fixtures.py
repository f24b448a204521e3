"""Session fixtures: tiny random-weight Hugging Face CLIP and SigLIP checkouts with real
tokenizers and processors, and their exports by ``retllm quantize clip --hf``'s own code.

- CLIP: ``CLIPTokenizerFast`` built from OpenAI CLIP's BPE (the copy bundled in
  ``retllm_lite/encode``), saved as ``tokenizer.json`` like the hub checkouts.
- SigLIP: a tiny SentencePiece unigram model trained here, saved as ``spiece.model``
  for ``SiglipTokenizer`` (transformers has no fast SigLIP tokenizer, so the exporter
  must convert it).
"""

from __future__ import annotations

import gzip
import json
import random
import string
from importlib import resources
from pathlib import Path

import pytest

CLIP_SIZE = 64  # crop size; shortest_edge is the same, as on the hub
SIGLIP_SIZE = 32
SIGLIP_CONTEXT = 16


def _clip_bpe_files(dest: Path) -> tuple[Path, Path]:
    """OpenAI CLIP's vocab.json + merges.txt, rebuilt from open_clip's BPE file."""
    from retllm_lite.encode.tokenizer import _N_MERGES, _VOCAB_FILE, _bytes_to_unicode

    raw = resources.files("retllm_lite.encode").joinpath(_VOCAB_FILE).read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    units = list(_bytes_to_unicode().values())
    vocab = [*units, *(u + "</w>" for u in units), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return dest / "vocab.json", dest / "merges.txt"


def build_tiny_hf_clip(dest: Path, seed: int = 0) -> Path:
    """A tiny random ``CLIPModel`` checkout (safetensors, tokenizer.json, preprocessor_config.json)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    vocab, merges = _clip_bpe_files(dest.parent / f".{dest.name}-bpe")
    tokenizer = CLIPTokenizerFast(vocab_file=str(vocab), merges_file=str(merges), model_max_length=77)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": CLIP_SIZE,
            "patch_size": 16,
        },
        projection_dim=24,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(dest)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)
    return dest


_WORDS = (
    "a an the of on in at near over under with photo picture image dog cat cats bicycle red blue "
    "green yellow beach sea city night day sunset mountain bowl fruit table people walking car "
    "tree house river sky cloud snow two three one man woman child old new small big"
)


def _train_sentencepiece(prefix: Path) -> Path:
    import sentencepiece as spm

    rng = random.Random(0)
    words = _WORDS.split()
    words += [
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8))) for _ in range(300)
    ]
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    corpus += [string.printable, "0123456789 éüßøåçñ"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_prefix=str(prefix),
        vocab_size=300,
        model_type="unigram",
        # google/siglip-*: <pad> 0, </s> 1 (also the pad token), <unk> 2, no <s>
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def build_tiny_hf_siglip(dest: Path, seed: int = 0) -> Path:
    """A tiny random ``SiglipModel`` checkout (safetensors, spiece.model, preprocessor_config.json)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    spm_file = _train_sentencepiece(dest.parent / f".{dest.name}-spm")
    tokenizer = SiglipTokenizer(str(spm_file), model_max_length=SIGLIP_CONTEXT)
    config = SiglipConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": SIGLIP_CONTEXT,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": SIGLIP_SIZE,
            "patch_size": 8,
        },
    )
    torch.manual_seed(seed)
    SiglipModel(config).eval().save_pretrained(dest)
    image_processor = SiglipImageProcessor(size={"height": SIGLIP_SIZE, "width": SIGLIP_SIZE})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)
    return dest


BUILDERS = {"clip": build_tiny_hf_clip, "siglip": build_tiny_hf_siglip}


@pytest.fixture(scope="session")
def hf_checkouts(tmp_path_factory) -> dict[str, Path]:
    """model_type -> a tiny random HF checkout folder."""
    pytest.importorskip("transformers")
    pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("hf-checkouts")
    return {kind: build(root / f"tiny-{kind}") for kind, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def hf_exports(hf_checkouts, tmp_path_factory) -> dict[str, Path]:
    """model_type -> the checkout exported by ``export_hf_clip`` (fp32 + int8)."""
    pytest.importorskip("optimum.exporters.onnx")
    from retllm_lite.quantize.hf_clip import export_hf_clip

    root = tmp_path_factory.mktemp("hf-exports")
    out = {}
    for kind, checkout in hf_checkouts.items():
        out[kind] = root / f"tiny-{kind}"
        export_hf_clip(checkout, out[kind], log=lambda m: None)
    return out
