"""What every tiny random-weight VLM builder does the same way (Gemma3, Qwen2-VL, SmolVLM).

``staged_checkout`` writes a checkout into a temporary sibling folder and moves it into
place only when complete; ``reinit_weights`` draws the weights and nudges the answer words;
``set_top_level_ids`` writes the bos/eos/pad ids the converter reads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from retllm_lite.errors import BadInput, require


@contextlib.contextmanager
def staged_checkout(out_dir: str | Path, prefix: str) -> Iterator[tuple[Path, Path]]:
    """Yield ``(work, stage)``: fill ``stage``; on success its files move into ``out_dir``.

    ``out_dir`` must be new or empty; ``work`` (stage's parent) is removed either way.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"{out} is not empty", hint="build the tiny VLM into a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=out.parent))
    try:
        stage = work / "checkout"
        stage.mkdir()
        yield work, stage
        out.mkdir(parents=True, exist_ok=True)
        for item in stage.iterdir():
            shutil.move(str(item), out / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def reinit_weights(
    model: Any,
    seed: int,
    piece_id: dict[str, int],
    answer_boost: float,
    *,
    anchor: str,
    answers: Sequence[str],
    std: float = 0.08,
) -> None:
    """N(0, std) matrices (seeded); the tied rows of ``answers`` moved ``answer_boost`` along
    the unit direction of ``anchor`` (the piece the answer follows), so both answers get real
    probability instead of ~1/vocab."""
    torch = require("torch", "export", "Building the tiny test VLM")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, param in sorted(model.named_parameters()):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
        emb = model.get_input_embeddings().weight
        direction = emb[piece_id[anchor]] / emb[piece_id[anchor]].norm()
        for word in answers:
            emb[piece_id[word]] += answer_boost * direction


def set_top_level_ids(stage: Path, *, bos: int, eos: int, pad: int) -> None:
    """Top-level ids in config.json: without them the GGUF silently lacks bos/eos/pad."""
    path = stage / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
