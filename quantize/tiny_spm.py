"""A small SentencePiece BPE vocabulary, trained in memory, for the tiny test VLMs.

llama.cpp's converter reads a ``tokenizer.model`` directly (``_set_vocab_sentencepiece``),
which the Qwen2-VL and Llama (SmolVLM) converters try first. A ``tokenizer.json`` BPE goes
through ``get_vocab_base_pre`` instead, which hashes the token ids of a fixed test string
and stops on any vocabulary it does not know, so a vocabulary trained here cannot take
that path without patching the converter.

The corpus mixes the words of the default prompts, answers at the start of a line
("True", as after ChatML's ``assistant\\n``) and after a space (" True", as after
SmolVLM's ``Assistant:``), so both spellings become single pieces.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from retllm_lite.errors import BadInput, require

ANSWER_WORDS = ["True", "False", "Yes", "No", *[str(d) for d in range(10)]]

_VOCABULARY = """
a an the of in on with and or is are this that these image picture photo caption query
candidate does do match matches describe describes show shows same content answer
question which number only first second modified by relevant to text dog cat bird horse
car bus train boat plane bike tree flower house street beach mountain river sky city
park table chair cup book phone ball kite person man woman child red blue green yellow
black white small large old young running sitting standing flying eating playing near
under over next two three many snow grass water night day sunny cloudy you helpful
assistant system user
"""
WORDS = _VOCABULARY.split()


def corpus(rng: random.Random, headers: Sequence[str], n_lines: int = 3000) -> list[str]:
    """Sentences of prompt words; answers both at a line start and after a space."""
    lines = []
    for _ in range(n_lines):
        words = rng.choices(WORDS, k=rng.randint(4, 14))
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
        lines.append(rng.choice([*ANSWER_WORDS, *headers]))
        lines.append(f"{rng.choice(headers)}: {rng.choice(ANSWER_WORDS)}")
    return lines


def train_bpe(
    model_path: Path,
    *,
    seed: int,
    vocab_size: int,
    specials: Sequence[str],
    headers: Sequence[str],
    unk: tuple[int, str],
    eos: tuple[int, str],
    pad: tuple[int, str] | None = None,
    bos: tuple[int, str] | None = None,
    single_pieces: Sequence[str] = (),
) -> None:
    """Train a BPE model into ``model_path``; ``single_pieces`` must each encode to one piece."""
    spm = require("sentencepiece", "export", "Building a tiny test VLM")
    ids = {"unk": unk, "eos": eos, "pad": pad or (-1, "<pad>"), "bos": bos or (-1, "<s>")}
    # Trained from memory so the saved model holds no temporary paths: same seed, same bytes.
    with open(model_path, "wb") as writer:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus(random.Random(seed), headers)),
            model_writer=writer,
            model_type="bpe",
            vocab_size=vocab_size,
            **{f"{k}_id": v[0] for k, v in ids.items()},
            **{f"{k}_piece": v[1] for k, v in ids.items()},
            user_defined_symbols=list(specials),
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
    for word in single_pieces:
        if len(proc.encode(word)) != 1:
            raise BadInput(f"tiny tokenizer (seed {seed}) splits {word!r}; pick another seed")
