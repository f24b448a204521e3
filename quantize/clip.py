"""``retllm quantize clip``: an open_clip model -> two ONNX towers (+ int8) -> model directory.

Sources: an open_clip architecture name (or a path to an open_clip model-config JSON)
with a pretrained tag (downloaded by open_clip where there is a network), a local
checkpoint file (loaded with ``weights_only=True``: no pickle is ever executed), or
``random_init`` for tests and smoke runs. Hugging Face CLIP/SigLIP checkouts go
through ``quantize.hf_clip`` instead.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from retllm_lite.encode.preprocess import PreprocessConfig
from retllm_lite.encode.tokenizer import ClipBpeTokenizer
from retllm_lite.errors import BadInput, ModelNotFound, RetllmError, require

from .towers import INT8_MEAN_COSINE, Tower, check_written, write_model_dir


def _load_open_clip():
    require("torch", "export", "exporting a CLIP model")
    return require("open_clip", "export", "exporting an open_clip model")


def _register_arch(open_clip, arch: str) -> str:
    """Accept a built-in name or a path to a model-config JSON (registered under its stem)."""
    path = Path(arch).expanduser()
    if path.suffix == ".json" and path.is_file():
        open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        raise ModelNotFound(
            f"{arch!r} is not an open_clip architecture",
            hint="see open_clip.list_models(), or pass a model-config .json file",
        )
    return arch


def create_open_clip(arch: str, pretrained: str | None, random_init: bool, seed: int = 0):
    """Build the torch model; returns (model, name, source description)."""
    open_clip = _load_open_clip()
    import torch

    if bool(pretrained) == bool(random_init):
        raise BadInput("give exactly one of --pretrained TAG_OR_PATH and --random-init")
    name = _register_arch(open_clip, arch)
    if random_init:
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None, pretrained_text=False)
        source = {"kind": "random-init", "seed": seed}
    else:
        ckpt = Path(pretrained).expanduser()
        if ckpt.is_file():
            from retllm_lite.hashing import sha256_file

            source = {"kind": "checkpoint", "path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)}
        elif pretrained in open_clip.list_pretrained_tags_by_model(name):
            source = {"kind": "pretrained-tag", "tag": pretrained}
        else:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ModelNotFound(
                f"--pretrained {pretrained!r} is neither a file nor a known tag for {name}",
                hint=f"known tags: {tags}",
            )
        try:
            model = open_clip.create_model(name, pretrained=pretrained, weights_only=True)
        except RetllmError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelNotFound(
                f"cannot load {name} weights from {pretrained!r}: {first[:300]}",
                hint="downloads need a network; offline, pass a local checkpoint file",
            ) from None
    model.eval()
    return model, name, source


def _preprocess_config(model) -> PreprocessConfig:
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    if cfg.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise RetllmError(
            f"resize_mode {cfg['resize_mode']!r} is not supported by the torch-free preprocessing"
        )
    return PreprocessConfig.from_dict({**cfg, "size": size})


def _check_tokenizer(open_clip, name: str, context_length: int) -> dict:
    """Our torch-free tokenizer must reproduce the model's own tokenizer exactly."""
    ref = open_clip.get_tokenizer(name)
    if type(ref).__name__ != "SimpleTokenizer" or getattr(ref, "reduction_fn", None) is not None:
        raise RetllmError(
            f"{name} uses a {type(ref).__name__} tokenizer, which the torch-free search path "
            "does not reproduce",
            hint="export the model's Hugging Face checkout with 'retllm quantize clip --hf DIR'",
        )
    ours = ClipBpeTokenizer(context_length)
    rng = random.Random(0)
    samples = [
        "a photo of a dog",
        "Two cats on a sofa!",
        "&amp; HTML &lt;b&gt; entities",
        "naïve café — “quotes”",
        "ＦＵＬＬ ｗｉｄｔｈ",
        "emoji 🐶🐱",
        "ÃƒÂ© mojibake",
        "",
        "<start_of_text> literal",
        "x" * 500,
    ]
    samples += ["".join(rng.choice(string.printable) for _ in range(rng.randint(1, 90))) for _ in range(40)]
    mismatches = sum(
        int(not np.array_equal(ours([s])["text"], ref([s], context_length=context_length).numpy()))
        for s in samples
    )
    if mismatches:
        raise RetllmError(f"{name}: the torch-free tokenizer differs on {mismatches}/{len(samples)} strings")
    return {"strings": len(samples), "mismatches": 0}


def export_open_clip(
    arch: str,
    out_dir: str | Path,
    pretrained: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    int8: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    int8_min_mean_cosine: float | Mapping[str, float] = INT8_MEAN_COSINE,
) -> dict:
    """Export an open_clip model to ``out_dir``; returns the manifest written there.

    ``int8_min_mean_cosine``: the parity bar an int8 tower must meet (``towers.write_model_dir``).
    """
    open_clip = _load_open_clip()
    import torch

    model, name, source = create_open_clip(arch, pretrained, random_init, seed)
    source["architecture"] = name
    context_length = int(getattr(model, "context_length", 77))
    tokenizer_check = _check_tokenizer(open_clip, name, context_length)
    pre = _preprocess_config(model)
    vocab = int(getattr(model, "vocab_size", 49408))

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model.encode_image(pixel_values)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, text):
            return self.model.encode_text(text)

    tok = ClipBpeTokenizer(context_length)

    def image_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"pixel_values": rng.standard_normal((n, 3, pre.size, pre.size)).astype(np.float32)}

    def text_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        rows = np.zeros((n, context_length), dtype=np.int64)
        for i in range(n):
            length = int(rng.integers(1, context_length - 1))
            body = rng.integers(0, min(vocab, tok.sot_id), size=length)
            ids = [tok.sot_id, *body.tolist(), tok.eot_id][:context_length]
            rows[i, : len(ids)] = ids
        return {"text": rows}

    with torch.no_grad():
        dim = int(
            model.encode_text(torch.from_numpy(text_inputs(np.random.default_rng(0), 1)["text"])).shape[-1]
        )
    meta = {
        "name": name,
        "family": "open_clip",
        "architecture": name,
        "source": source,
        "embed_dim": dim,
        "preprocess": pre.to_dict(),
        "tokenizer": {"kind": "open_clip_bpe", "context_length": context_length, "check": tokenizer_check},
    }
    towers = [
        Tower("image", ImageTower().eval(), ["pixel_values"], image_inputs),
        Tower("text", TextTower().eval(), ["text"], text_inputs),
    ]
    log(f"exporting {name} ({source['kind']}) to {out_dir}")
    manifest = write_model_dir(
        out_dir, towers, meta, int8=int8, force=force, log=log, int8_min_mean_cosine=int8_min_mean_cosine
    )
    check_written(Path(out_dir).expanduser())
    return manifest
