"""Hugging Face CLIP / SigLIP towers -> our manifest, without torch or transformers.

Export-time code (``retllm quantize clip --hf``, and ``retllm models pull`` for ready-made
ONNX towers); searching never needs it: it reads the manifest this writes.

A folder in the Hugging Face layout (``config.json``, ``preprocessor_config.json``,
``tokenizer.json`` and friends) next to two ONNX towers, whoever exported them
(``retllm quantize clip --hf`` or a ready-made download), becomes a model directory
``load_encoder`` can use once :func:`write_hf_manifest` has written ``manifest.json``.

What is reproduced, and from where:

- **Images**: ``CLIPImageProcessor`` (convert to RGB, resize the shortest edge,
  centre crop with floored offsets, rescale, normalise) and ``SiglipImageProcessor``
  (resize to size x size, squashing the aspect ratio). Both resize with PIL, as the
  slow (default) HF processors do, so the pixels are the same bit for bit.
- **Text**: ``tokenizer.json`` run by the ``tokenizers`` package, padded and truncated
  to the text tower's context length with the tokenizer's pad token, as the HF
  processor does with ``padding="max_length"``. SigLIP's tokenizer also lowercases and
  strips ASCII punctuation before SentencePiece (transformers' ``SiglipTokenizer`` is
  Python-only, and its ``canonicalize_text`` step is not in a converted
  ``tokenizer.json``); the manifest says so and ``HfTokenizer`` does it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from retllm_lite.encode.manifest import CLIP_FORMAT, FORMAT_VERSION, MANIFEST_NAME, TOWERS
from retllm_lite.encode.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig
from retllm_lite.encode.tokenizers import load_tokenizer_json
from retllm_lite.errors import BadInput, BadModelFile, ModelNotFound, RetllmError
from retllm_lite.hashing import sha256_file

# config.json model_type -> manifest family. Both are two-tower models whose
# get_image_features / get_text_features share one embedding space and whose
# processors are reproduced here exactly.
HF_FAMILIES = {"clip": "hf_clip", "siglip": "hf_siglip"}
SUPPORTED = "CLIPModel (model_type 'clip') and SiglipModel (model_type 'siglip')"

# Defaults of the transformers configs / processors, for files that leave them out.
_CONTEXT_LENGTH = {"clip": 77, "siglip": 64}
_PAD_TOKEN = {"clip": "<|endoftext|>", "siglip": "</s>"}
_IMAGE_SIZE = {"clip": 224, "siglip": 224}
_MEAN_STD = {"clip": (OPENAI_MEAN, OPENAI_STD), "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values
TEXT_INPUTS = ("input_ids", "attention_mask")  # what HfTokenizer can feed a text tower


class UnsupportedModel(RetllmError):
    """A checkout this exporter does not handle (kind of model or preprocessing)."""


def read_json(model_dir: Path, name: str, required: bool = True) -> dict:
    path = Path(model_dir) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ModelNotFound(
                f"{model_dir}: no {name} (not a Hugging Face model folder)",
                hint="pass the folder that holds config.json, preprocessor_config.json and tokenizer files",
            ) from None
        return {}
    except (OSError, ValueError) as exc:
        raise BadModelFile(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadModelFile(f"{path}: expected a JSON object")
    return data


def hf_model_type(config: dict, where: str | Path = "config.json") -> str:
    """config.json's model_type, or UnsupportedModel naming what is supported and why."""
    model_type = config.get("model_type")
    if model_type in HF_FAMILIES:
        return model_type
    why = {
        "siglip2": "SigLIP 2 checkpoints use a Gemma tokenizer and NaFlex variable-resolution preprocessing",
        "clip_vision_model": "a vision tower alone has no text encoder to search with",
        "clip_text_model": "a text tower alone has no image encoder to index with",
        "siglip_vision_model": "a vision tower alone has no text encoder to search with",
    }.get(model_type, "it is not a two-tower image-text model whose preprocessing retllm reproduces")
    raise UnsupportedModel(
        f"{where}: model_type {model_type!r} is not supported ({why})",
        hint=f"supported: {SUPPORTED}; for open_clip models use 'retllm quantize clip ARCH'",
    )


def _square(value, what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and "height" in value and "width" in value:
        if value["height"] != value["width"]:
            raise UnsupportedModel(f"{what} {value} is not square; only square towers are supported")
        return int(value["height"])
    raise UnsupportedModel(f"{what} {value!r} is not a size this exporter understands")


def hf_preprocess_config(preprocessor_config: dict, model_type: str) -> PreprocessConfig:
    """Our ``PreprocessConfig`` for a CLIP/SigLIP ``preprocessor_config.json`` (same pixels).

    Raises UnsupportedModel for settings the torch-free path does not reproduce
    (no resize, no crop, resampling other than bicubic/bilinear, another rescale factor).
    """
    pc = preprocessor_config
    if model_type not in HF_FAMILIES:
        hf_model_type({"model_type": model_type})
    default_size = _IMAGE_SIZE[model_type]
    if not pc.get("do_resize", True):
        raise UnsupportedModel("preprocessor_config.json: do_resize is false; images must be resized")
    resample = pc.get("resample", 3)
    if resample not in _RESAMPLE:
        raise UnsupportedModel(f"preprocessor_config.json: resample={resample} (only bicubic 3, bilinear 2)")
    if pc.get("do_rescale", True) and abs(float(pc.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise UnsupportedModel(
            f"preprocessor_config.json: rescale_factor {pc['rescale_factor']} is not 1/255"
        )
    if not pc.get("do_rescale", True):
        raise UnsupportedModel(
            "preprocessor_config.json: do_rescale is false (pixels must be scaled to 0..1)"
        )
    mean, std = _MEAN_STD[model_type]
    if pc.get("do_normalize", True):
        mean = tuple(float(x) for x in pc.get("image_mean", mean))
        std = tuple(float(x) for x in pc.get("image_std", std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) != 3 or len(std) != 3:
        raise UnsupportedModel("preprocessor_config.json: image_mean/image_std need three values")
    common = {
        "mean": mean,
        "std": std,
        "interpolation": _RESAMPLE[resample],
        "crop_rounding": "floor",  # transformers' center_crop: (h - crop) // 2
        "rgb_first": True,  # CLIPImageProcessor converts before resizing; SigLIP's input must be RGB anyway
    }
    if model_type == "siglip":
        size = _square(pc.get("size", default_size), "preprocessor_config.json size")
        return PreprocessConfig(size=size, resize_mode="squash", **common)
    # CLIP: size {"shortest_edge": N} (or a bare int, the same), then centre crop.
    size = pc.get("size", default_size)
    crop = _square(pc.get("crop_size", size if isinstance(size, int) else default_size), "crop_size")
    if not pc.get("do_center_crop", True):
        raise UnsupportedModel("preprocessor_config.json: do_center_crop is false (non-square input)")
    if isinstance(size, dict) and "shortest_edge" in size:
        short = int(size["shortest_edge"])
    elif isinstance(size, int):
        short = size
    elif isinstance(size, dict) and "height" in size:
        if _square(size, "preprocessor_config.json size") != crop:
            raise UnsupportedModel(f"preprocessor_config.json: resize to {size} then crop {crop}")
        return PreprocessConfig(size=crop, resize_mode="squash", **common)
    else:
        raise UnsupportedModel(f"preprocessor_config.json: size {size!r} is not understood")
    if short < crop:
        raise UnsupportedModel(f"preprocessor_config.json: shortest_edge {short} is below crop size {crop}")
    return PreprocessConfig(
        size=crop, resize_mode="shortest", resize_size=None if short == crop else short, **common
    )


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def hf_tokenizer_spec(model_dir: str | Path, model_type: str, input_names=TEXT_INPUTS) -> dict:
    """The manifest's ``tokenizer`` entry for an HF folder with a ``tokenizer.json``.

    Pads to the text tower's context length (``max_position_embeddings``) with the
    tokenizer's pad token, as ``processor(text, padding="max_length")`` does: CLIP pads
    with ``<|endoftext|>`` (its tower pools at the first end token, so padding does not
    change the embedding); SigLIP pads with ``</s>`` to 64 and pools the last position,
    so the length matters and the tower takes no attention mask.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelNotFound(
            f"{model_dir}: no tokenizer.json (the search path runs fast tokenizers only)",
            hint="'retllm quantize clip --hf DIR' writes one from spiece.model or vocab.json + merges.txt",
        )
    tok = load_tokenizer_json(path)
    config = read_json(model_dir, "config.json")
    tok_config = read_json(model_dir, "tokenizer_config.json", required=False)
    special_map = read_json(model_dir, "special_tokens_map.json", required=False)
    text_config = config.get("text_config") or {}
    context_length = int(text_config.get("max_position_embeddings") or _CONTEXT_LENGTH[model_type])

    def token_id(key: str, default: str | None) -> tuple[str | None, int | None]:
        text = _token_text(tok_config.get(key)) or _token_text(special_map.get(key)) or default
        return text, (tok.token_to_id(text) if text is not None else None)

    pad_token, pad_id = token_id("pad_token", _PAD_TOKEN[model_type])
    eos_token, eos_id = token_id("eos_token", _PAD_TOKEN[model_type])
    if pad_id is None:
        raise BadModelFile(f"{path}: the pad token {pad_token!r} is not in the vocabulary")
    bad = [n for n in input_names if n not in TEXT_INPUTS]
    if bad:
        raise UnsupportedModel(f"the text tower wants inputs {bad}; only {list(TEXT_INPUTS)} can be fed")
    spec = {
        "kind": "hf_tokenizers",
        "file": "tokenizer.json",
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "context_length": context_length,
        "pad_token": pad_token,
        "pad_id": int(pad_id),
        "eos_token": eos_token,
        "eos_id": None if eos_id is None else int(eos_id),
        "input_names": list(input_names),
    }
    if model_type == "siglip":
        # SiglipTokenizer: lower-case (do_lower_case, default True), then canonicalize_text
        # (drop string.punctuation, collapse whitespace, strip) before SentencePiece.
        spec["lowercase"] = bool(tok_config.get("do_lower_case", True))
        spec["canonicalize"] = "siglip"
    return spec


def _embed_dim_from_config(config: dict, model_type: str) -> int | None:
    if model_type == "clip":
        return config.get("projection_dim", 512)
    text = config.get("text_config") or {}
    vision = config.get("vision_config") or {}
    return text.get("projection_size") or text.get("hidden_size") or vision.get("hidden_size") or 768


def hf_model_meta(
    model_dir: str | Path,
    *,
    name: str,
    source: dict,
    input_names=TEXT_INPUTS,
    embed_dim: int | None = None,
) -> dict:
    """Manifest fields that come from the HF files: family, preprocessing, tokenizer, size."""
    model_dir = Path(model_dir)
    config = read_json(model_dir, "config.json")
    model_type = hf_model_type(config, model_dir / "config.json")
    preprocessor = read_json(model_dir, "preprocessor_config.json")
    dim = embed_dim or _embed_dim_from_config(config, model_type)
    return {
        "name": name,
        "family": HF_FAMILIES[model_type],
        "architecture": (config.get("architectures") or [model_type])[0],
        "source": source,
        "embed_dim": int(dim),
        "preprocess": hf_preprocess_config(preprocessor, model_type).to_dict(),
        "tokenizer": hf_tokenizer_spec(model_dir, model_type, input_names),
    }


def _relative_file(model_dir: Path, file: str) -> Path:
    rel = PurePosixPath(file)
    if rel.is_absolute() or ".." in rel.parts:
        raise BadInput(f"{file!r}: tower files must be paths inside the model folder")
    path = model_dir / rel
    if not path.is_file():
        raise ModelNotFound(f"{path}: no such tower file")
    return path


def _tower_io(path: Path) -> tuple[dict[str, str], dict[str, list]]:
    """An ONNX file's input types and output shapes, as onnxruntime sees them."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadModelFile(f"{path}: onnxruntime cannot load it ({first[:200]})") from None
    return (
        {i.name: i.type for i in sess.get_inputs()},
        {o.name: list(o.shape) for o in sess.get_outputs()},
    )


def _check_tower(path: Path, tower: str, output: str) -> tuple[list[str], int | None]:
    """The tower's input names and embedding size; BadModelFile if we could not run it."""
    inputs, outputs = _tower_io(path)
    if output not in outputs:
        raise BadModelFile(f"{path}: no output {output!r} (it has {', '.join(outputs)})")
    if tower == "image":
        if len(inputs) != 1:
            raise BadModelFile(f"{path}: an image tower takes one pixel input, this one takes {list(inputs)}")
        want = {"tensor(float)"}
    else:
        extra = [n for n in inputs if n not in TEXT_INPUTS]
        if extra or "input_ids" not in inputs:
            raise BadModelFile(
                f"{path}: a text tower takes input_ids[, attention_mask], this one takes {list(inputs)}"
            )
        want = {"tensor(int64)"}
    bad = {n: t for n, t in inputs.items() if t not in want}
    if bad:
        raise BadModelFile(f"{path}: input types {bad}; the encoder feeds {sorted(want)}")
    shape = outputs[output]
    dim = shape[-1] if shape and isinstance(shape[-1], int) else None
    return list(inputs), dim


def write_hf_manifest(
    model_dir: str | Path,
    *,
    name: str,
    source: dict,
    variants: dict[str, dict[str, str]],
    outputs: dict[str, str] | None = None,
    parity: dict | None = None,
    default_variant: str | None = None,
    check: bool = True,
    extra: dict | None = None,
) -> dict:
    """Write ``manifest.json`` for ONNX towers in a Hugging Face model folder; returns it.

    ``variants`` maps a variant ("fp32", "int8", ...) to ``{"image": file, "text": file}``
    (paths relative to ``model_dir``, e.g. ``onnx/vision_model.onnx``); ``outputs`` names
    the output holding each tower's embedding (default ``image_embeds`` / ``text_embeds``).
    ``parity`` is what was measured against the source model, or None (not measured).
    With ``check`` every tower is opened with onnxruntime: the output must exist, inputs
    must be what the encoder feeds (float32 pixels; int64 ids and mask), and the
    embedding size is read from the output shape. ``manifest.json`` is written to a
    temporary file and renamed into place.
    """
    model_dir = Path(model_dir).expanduser()
    outputs = {"image": "image_embeds", "text": "text_embeds", **(outputs or {})}
    if not variants:
        raise BadInput("write_hf_manifest: no variants given")
    entries: dict[str, dict] = {}
    text_inputs: list[str] | None = None
    dims: set[int] = set()
    for variant, towers in variants.items():
        missing = [t for t in TOWERS if t not in towers]
        if missing:
            raise BadInput(f"variant {variant!r}: no {' and '.join(missing)} tower file")
        entries[variant] = {}
        for tower in TOWERS:
            path = _relative_file(model_dir, towers[tower])
            if check:
                inputs, dim = _check_tower(path, tower, outputs[tower])
                if dim is not None:
                    dims.add(dim)
                if tower == "text":
                    if text_inputs is not None and set(inputs) != set(text_inputs):
                        raise BadModelFile(
                            f"{path}: takes {inputs}, the other variants' text towers take {text_inputs}"
                        )
                    text_inputs = inputs
            entries[variant][tower] = {
                "file": PurePosixPath(towers[tower]).as_posix(),
                "sha256": sha256_file(path),
                "bytes": path.stat().st_size,
                "output": outputs[tower],
            }
    if len(dims) > 1:
        raise BadModelFile(f"{model_dir}: the towers' embedding sizes differ ({sorted(dims)})")
    meta = hf_model_meta(
        model_dir,
        name=name,
        source=source,
        input_names=text_inputs or ["input_ids", "attention_mask"],
        embed_dim=dims.pop() if dims else None,
    )
    if default_variant is None:
        default_variant = (
            "int8" if "int8" in entries else ("fp32" if "fp32" in entries else next(iter(entries)))
        )
    elif default_variant not in entries:
        raise BadInput(f"default_variant {default_variant!r} is not one of {list(entries)}")
    manifest = {
        "format": CLIP_FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "variants": entries,
        "default_variant": default_variant,
        "parity": parity,
        # No timestamp: the manifest is a function of the files, so re-pulling the same
        # model gives the same manifest sha256, which is how an index recognises its model.
        **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=model_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, model_dir / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest
