"""``retllm quantize clip --hf DIR``: a local Hugging Face CLIP/SigLIP checkout -> model directory.

How: optimum's ONNX exporter (the ``optimum-onnx`` package) exports the checkout's
``CLIPModel`` / ``SiglipModel`` for ``feature-extraction`` as ONE graph that needs
pixels and token ids on every call. ``onnx.utils.Extractor`` then cuts it into the
two towers our layout wants: ``pixel_values -> image_embeds`` and ``input_ids[,
attention_mask] -> text_embeds``.

Why this route rather than per-tower custom ONNX configs: the split uses only
optimum's default, tested export path for these model types and onnx's own sub-graph
extraction, and the two towers are independent sub-graphs of that export (no shared
nodes; a cut that needed the other tower's inputs fails ``onnx.checker``).
Custom per-tower configs would need wrapper modules and optimum's experimental
``fn_get_submodels`` / ``custom_onnx_configs`` hooks, whose contracts change between
releases. Either way the result is checked against transformers'
``get_image_features`` / ``get_text_features`` on fresh random inputs with the same
bars as the open_clip path (``towers.write_model_dir``), and nothing is written below
them.

The tokenizer becomes a ``tokenizer.json`` (SigLIP checkouts ship only ``spiece.model``:
it is converted here) and is checked id for id against the checkout's own tokenizer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import shutil
import string
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from retllm_lite.quantize.hf_layout import (
    HF_FAMILIES,
    UnsupportedModel,
    hf_model_meta,
    hf_model_type,
    hf_preprocess_config,
    hf_tokenizer_spec,
    read_json,
)

from retllm_lite.encode.tokenizers import make_tokenizer
from retllm_lite.errors import BadModelFile, MissingDependency, ModelNotFound, RetllmError, require
from retllm_lite.hashing import sha256_file

from .towers import INT8_MEAN_COSINE, Tower, check_written, prepare_out_dir, write_model_dir

# Files copied next to the towers: what the tokenizer and a later write_hf_manifest read.
HF_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")

# Strings the exported tokenizer must tokenize exactly as the checkout's own tokenizer.
# Literal special tokens ("</s>", "<|endoftext|>") are left out: SigLIP's Python
# tokenizer maps them to control ids, ours (like its punctuation clean-up) to letters.
TOKENIZER_SAMPLES = [
    "",
    " ",
    "a photo of a dog",
    "A PHOTO OF A DOG!!!",
    "Two cats, one mat; no dogs.",
    "two  cats\tand\na   mat",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\uff26\uff35\uff2c\uff2c width",
    "emoji \U0001f436\U0001f431 and \u2764\ufe0f",
    "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",
    "don't won't it's we'll",
    "numbers 1234567890 3.14",
    "punctuation !@#$%^&*()_+-=[]{}|;':\",./<>?",
    "\u2581leading marker and \u2581 inside",
    "  leading and trailing  ",
    "x" * 400,
    "a dog on a beach " * 40,
]


def _samples(n_random: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = (
        string.ascii_letters + string.digits + " .,!?-'\"()" + "\u00e9\u00fc\u00df\u00f8\u4e2d\u6587\u20ac"
    )
    rand = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(n_random)]
    return TOKENIZER_SAMPLES + rand


def _require_stack():
    require("torch", "export", "exporting a Hugging Face checkout")
    require("transformers", "export", "exporting a Hugging Face checkout")
    require("onnx", "export", "splitting the exported ONNX graph")
    try:
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError as exc:
        raise MissingDependency(
            f"exporting a Hugging Face checkout needs optimum's ONNX exporter, the package "
            f"'optimum-onnx' ({exc})",
            hint="install it with: pip install 'retllm-lite[export]'",
        ) from exc
    return onnx_export_from_model


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (TracerWarnings, info logs, prints); errors still raise."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    optimum_logger = logging.getLogger("optimum")
    optimum_level = optimum_logger.level
    hf_logging.set_verbosity_error()
    optimum_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        optimum_logger.setLevel(optimum_level)


def load_hf_model(hf_dir: Path, model_type: str):
    """The checkout's full two-tower model in fp32; refuses one with missing weights."""
    import torch
    from transformers import CLIPModel, SiglipModel

    cls = {"clip": CLIPModel, "siglip": SiglipModel}[model_type]
    try:
        with _quiet():
            model, info = cls.from_pretrained(
                hf_dir, local_files_only=True, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelNotFound(f"{hf_dir}: cannot load a {cls.__name__} ({first[:300]})") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:
        raise BadModelFile(
            f"{hf_dir}: the checkpoint lacks {len(missing)} weights of a full {cls.__name__} "
            f"(e.g. {missing[0]}); exporting it would use random weights",
            hint="pass a checkout saved from the two-tower model",
        )
    return model.eval()


class _SiglipConverter:
    """``spiece.model`` -> ``tokenizers`` Unigram with SiglipTokenizer's SentencePiece step.

    transformers has no fast SigLIP tokenizer; its generic SentencePiece converter
    reproduces ``sp_model.encode`` (no dummy prefix, a "▁" prepended by ``tokenize``)
    and we add the ``</s>`` the slow tokenizer appends. Lower-casing and punctuation
    removal stay in ``HfTokenizer`` (manifest ``canonicalize: siglip``).
    """

    @staticmethod
    def convert(slow):
        from tokenizers import processors
        from transformers.convert_slow_tokenizer import SpmConverter

        class Converter(SpmConverter):
            def post_processor(self):
                eos = self.original_tokenizer.eos_token
                return processors.TemplateProcessing(
                    single=["$A", eos],
                    pair=["$A", eos, "$B", eos],
                    special_tokens=[(eos, self.original_tokenizer.convert_tokens_to_ids(eos))],
                )

        return Converter(slow).converted()


def _reference_tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    try:
        with _quiet():
            return AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelNotFound(
            f"{hf_dir}: cannot load the checkout's tokenizer ({first[:300]})",
            hint="the folder needs tokenizer.json, or spiece.model (SigLIP) / vocab.json + merges.txt (CLIP)",
        ) from None


def stage_hf_files(hf_dir: Path, model_type: str, dest: Path, reference) -> list[Path]:
    """Copy the HF files the search path reads into ``dest``; make tokenizer.json if absent."""
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for name in HF_FILES:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, dest / name)
            files.append(dest / name)
    tok_json = dest / "tokenizer.json"
    if (hf_dir / "tokenizer.json").is_file():
        shutil.copyfile(hf_dir / "tokenizer.json", tok_json)
    elif getattr(reference, "is_fast", False):
        reference.backend_tokenizer.save(str(tok_json))
    elif model_type == "siglip":
        _SiglipConverter.convert(reference).save(str(tok_json))
    else:
        raise UnsupportedModel(
            f"{hf_dir}: no tokenizer.json and {type(reference).__name__} has no fast version to convert"
        )
    files.append(tok_json)
    return files


def check_tokenizer(reference, spec: dict, staged: Path) -> dict:
    """Our tokenizer (tokenizers + manifest spec) must give the checkout's tokenizer's ids."""
    ours = make_tokenizer(spec, staged)
    samples = _samples()
    length = spec["context_length"]
    with _quiet():
        ref = reference(samples, padding="max_length", max_length=length, truncation=True)
    got = ours(samples)
    keys = [k for k in spec["input_names"] if k in ref]
    bad = [
        s
        for i, s in enumerate(samples)
        if any(not np.array_equal(got[k][i], np.asarray(ref[k][i])) for k in keys)
    ]
    if bad:
        raise RetllmError(
            f"the exported tokenizer differs from {type(reference).__name__} on {len(bad)}/{len(samples)} "
            f"strings (first: {bad[0][:60]!r}); nothing was written",
            hint="report it with the checkout's tokenizer files",
        )
    return {"reference": type(reference).__name__, "strings": len(samples), "compared": keys, "mismatches": 0}


def split_towers(full: Path, dest: Path) -> tuple[dict[str, Path], list[str]]:
    """Cut optimum's one-graph export into image and text ONNX files (single files, < 2 GiB)."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(full), load_external_data=False)
    names = [i.name for i in model.graph.input]
    outs = {o.name for o in model.graph.output}
    if "pixel_values" not in names or "input_ids" not in names or not {"image_embeds", "text_embeds"} <= outs:
        raise BadModelFile(
            f"{full}: optimum's export has inputs {names} and outputs {sorted(outs)}; "
            "expected pixel_values, input_ids -> image_embeds, text_embeds"
        )
    extractor = Extractor(model)
    cuts = {
        "image": (["pixel_values"], "image_embeds"),
        "text": ([n for n in ("input_ids", "attention_mask") if n in names], "text_embeds"),
    }
    paths, text_inputs = {}, []
    for tower, (inputs, output) in cuts.items():
        sub = extractor.extract_model(inputs, [output])
        used = {i for node in sub.graph.node for i in node.input}
        for value in [v for v in sub.graph.input if v.name not in used]:
            sub.graph.input.remove(value)  # e.g. an attention_mask the tower ignores
        onnx.load_external_data_for_model(sub, str(full.parent))
        if sub.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF:
            raise UnsupportedModel(
                f"the {tower} tower is over 2 GiB, more than one ONNX file holds",
                hint="export a smaller model; our layout keeps each tower in one file",
            )
        try:
            onnx.checker.check_model(sub)
        except onnx.checker.ValidationError as exc:
            first = (str(exc).strip().splitlines() or ["invalid graph"])[0]
            raise BadModelFile(
                f"optimum's graph does not split into an independent {tower} tower ({first[:200]})"
            ) from None
        paths[tower] = dest / f"{tower}.onnx"
        onnx.save(sub, str(paths[tower]))
        if tower == "text":
            text_inputs = [v.name for v in sub.graph.input]
    return paths, text_inputs


def optimum_export(model, work: Path, log: Callable[[str], None]) -> tuple[dict[str, Path], list[str], str]:
    """optimum-onnx export of the whole model, then the split; returns (paths, text inputs, exporter)."""
    from importlib.metadata import version

    onnx_export_from_model = _require_stack()
    out = work / "optimum"
    try:
        with _quiet():
            # optimum's own validation is skipped: write_model_dir measures parity with
            # tighter bars (cosine on fresh inputs) and refuses to write below them.
            onnx_export_from_model(model, out, task="feature-extraction", do_validation=False)
    except RetllmError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadModelFile(f"optimum's ONNX export failed: {type(exc).__name__}: {first[:300]}") from None
    import onnx

    full = out / "model.onnx"
    opset = next(
        (o.version for o in onnx.load(str(full), load_external_data=False).opset_import if not o.domain), None
    )
    paths, text_inputs = split_towers(full, work)
    shutil.rmtree(out, ignore_errors=True)
    exporter = (
        f"optimum-onnx {version('optimum-onnx')} feature-extraction opset {opset}, "
        f"split with onnx.utils.Extractor (torch {version('torch')}, transformers {version('transformers')})"
    )
    return paths, text_inputs, exporter


def _towers(model, spec: dict, staged: Path, paths: dict[str, Path], text_inputs, exporter, size: int):
    """The two towers for write_model_dir: optimum's ONNX files, transformers as the reference."""
    import torch

    # optimum's image_embeds / text_embeds come from CLIPModel.forward / SiglipModel.forward,
    # which L2-normalise get_*_features: the reference does the same, so that the recorded
    # max abs difference means something (cosine is unaffected).
    class ImageFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model.get_image_features(pixel_values=pixel_values)
            return torch.nn.functional.normalize(out, dim=-1)

    class TextFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None):
            out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return torch.nn.functional.normalize(out, dim=-1)

    length = spec["context_length"]
    template = make_tokenizer(spec, staged)([""])
    frame = template["input_ids"][0][template["attention_mask"][0] == 1].tolist()  # [bos,] eos
    specials = {spec["pad_id"], *frame}
    vocab = int(model.config.text_config.vocab_size)
    body_ids = np.setdiff1d(np.arange(vocab), np.fromiter(specials, dtype=np.int64))

    def image_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"pixel_values": rng.standard_normal((n, 3, size, size)).astype(np.float32)}

    def text_inputs_fn(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Rows as the tokenizer makes them: [bos] body eos, then pad; one full-length row."""
        ids = np.full((n, length), spec["pad_id"], dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        room = length - len(frame)
        for i in range(n):
            k = room if i == 1 else int(rng.integers(0, room + 1))
            row = [*frame[:-1], *rng.choice(body_ids, size=k).tolist(), frame[-1]]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    return [
        Tower(
            "image",
            ImageFeatures().eval(),
            ["pixel_values"],
            image_inputs,
            onnx_file=paths["image"],
            exporter=exporter,
            output="image_embeds",
        ),
        Tower(
            "text",
            TextFeatures().eval(),
            list(text_inputs),
            text_inputs_fn,
            onnx_file=paths["text"],
            exporter=exporter,
            output="text_embeds",
        ),
    ]


def export_hf_clip(
    hf_dir: str | Path,
    out_dir: str | Path,
    int8: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    name: str | None = None,
    int8_min_mean_cosine: float | Mapping[str, float] = INT8_MEAN_COSINE,
) -> dict:
    """Export a local HF ``CLIPModel`` / ``SiglipModel`` checkout to ``out_dir``; returns the manifest."""
    hf_dir = Path(hf_dir).expanduser().resolve()
    if not hf_dir.is_dir():
        raise ModelNotFound(f"{hf_dir}: no such folder", hint="pass a local Hugging Face checkout (--hf DIR)")
    config = read_json(hf_dir, "config.json")
    model_type = hf_model_type(config, hf_dir / "config.json")
    pre = hf_preprocess_config(read_json(hf_dir, "preprocessor_config.json"), model_type)
    image_size = int((config.get("vision_config") or {}).get("image_size", pre.size))
    if image_size != pre.size:
        raise UnsupportedModel(
            f"{hf_dir}: the image processor makes {pre.size}px inputs, the vision tower takes {image_size}px"
        )
    out_dir = Path(out_dir).expanduser().resolve()
    prepare_out_dir(out_dir, force)
    _require_stack()
    import torch

    log(f"exporting {hf_dir.name} ({model_type}, Hugging Face checkout) to {out_dir}")
    model = load_hf_model(hf_dir, model_type)
    reference = _reference_tokenizer(hf_dir)
    source = {
        "kind": "hf-checkout",
        "path": str(hf_dir),
        "model_type": model_type,
        "name_or_path": config.get("_name_or_path") or None,
        "weights": {
            p.name: sha256_file(p) for p in sorted(hf_dir.iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)
        },
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-hf-", dir=out_dir.parent))
    try:
        staged = work / "files"
        extra_files = stage_hf_files(hf_dir, model_type, staged, reference)
        spec = hf_tokenizer_spec(staged, model_type)
        tokenizer_check = check_tokenizer(reference, spec, staged)
        log(
            f"  tokenizer: {tokenizer_check['strings']} strings tokenized as "
            f"{tokenizer_check['reference']} does"
        )
        paths, text_inputs, exporter = optimum_export(model, work, log)
        log(f"  optimum export split into image and text towers (text inputs: {', '.join(text_inputs)})")
        with torch.no_grad():
            dim = int(model.get_image_features(pixel_values=torch.zeros(1, 3, pre.size, pre.size)).shape[-1])
        meta = hf_model_meta(
            staged, name=name or hf_dir.name, source=source, input_names=text_inputs, embed_dim=dim
        )
        meta["tokenizer"]["check"] = tokenizer_check
        towers = _towers(model, meta["tokenizer"], staged, paths, text_inputs, exporter, pre.size)
        manifest = write_model_dir(
            out_dir,
            towers,
            meta,
            int8=int8,
            force=force,
            log=log,
            extra_files=extra_files,
            int8_min_mean_cosine=int8_min_mean_cosine,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check_written(out_dir)
    return manifest


__all__ = ["HF_FAMILIES", "export_hf_clip"]
