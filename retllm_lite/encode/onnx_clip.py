"""CLIP-style encoders exported to two ONNX files (image tower, text tower), run by onnxruntime.

Covers open_clip exports and Hugging Face CLIP/SigLIP exports (``retllm quantize clip``
writes both in the same layout); the manifest says which tokenizer and preprocessing
the towers expect. Sessions are created on first use, so a text-only search never
loads the image tower.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadModelFile
from .base import EncoderInfo, ImageSource, normalize
from .manifest import ClipManifest
from .preprocess import LoadedImage, load_image, preprocess
from .tokenizers import make_tokenizer


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModelFile(
            f"{path}: onnxruntime cannot load this model ({first[:200]})",
            hint="the file is truncated or not an ONNX model; re-export it",
        ) from None


class OnnxClipEncoder:
    """An ``Encoder`` over a ``retllm quantize clip`` model directory."""

    def __init__(
        self,
        model_dir: str | Path,
        variant: str | None = None,
        threads: int | None = None,
        batch_size: int = 16,
        draft_factor: float | None = 2.0,
        location: str | None = None,
    ):
        self.manifest = ClipManifest.load(model_dir)
        self.variant = variant or self.manifest.default_variant()
        # Resolve (and verify) both files now: a bad model fails before any work starts.
        self._paths = {t: self.manifest.tower_file(self.variant, t) for t in ("image", "text")}
        self._outputs = {t: self.manifest.tower_output(self.variant, t) for t in ("image", "text")}
        self.preprocess_config = self.manifest.preprocess
        self.threads = threads
        self.batch_size = batch_size
        self.draft_factor = draft_factor
        self.info = EncoderInfo(
            name=self.manifest.name,
            manifest_sha256=self.manifest.sha256,
            variant=self.variant,
            dim=self.manifest.embed_dim,
            location=location or str(self.manifest.directory.resolve()),
        )
        self._sessions: dict[str, object] = {}
        self._tokenizer = None

    def _get(self, tower: str):
        sess = self._sessions.get(tower)
        if sess is None:
            sess = self._sessions[tower] = _session(self._paths[tower], self.threads)
        return sess

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = make_tokenizer(self.manifest.tokenizer, self.manifest.directory)
        return self._tokenizer

    def load_image(self, source: ImageSource, name: str | bytes | os.PathLike | None = None) -> LoadedImage:
        return load_image(source, self.preprocess_config.short_side, self.draft_factor, name=name)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.preprocess_config)

    def _run(self, tower: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        sess = self._get(tower)
        names = [i.name for i in sess.get_inputs()]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise BadModelFile(
                f"{self._paths[tower]}: the {tower} tower wants inputs {missing} "
                f"that its manifest's preprocessing does not provide",
                hint="re-export the model with 'retllm quantize clip'",
            )
        output = self._outputs[tower]
        out = sess.run([output] if output else None, {n: feeds[n] for n in names})[0]
        return normalize(out)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if len(pixels) == 0:
            return np.zeros((0, self.info.dim), np.float32)
        name = self._get("image").get_inputs()[0].name
        parts = [
            self._run("image", {name: pixels[i : i + self.batch_size]})
            for i in range(0, len(pixels), self.batch_size)
        ]
        return np.concatenate(parts)

    def embed_images(self, images: Sequence[ImageSource]) -> np.ndarray:
        pixels = [self.preprocess(self.load_image(src).image) for src in images]
        if not pixels:
            return np.zeros((0, self.info.dim), np.float32)
        return self.embed_pixels(np.stack(pixels))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.info.dim), np.float32)
        parts = []
        for i in range(0, len(texts), self.batch_size):
            parts.append(self._run("text", self.tokenizer(texts[i : i + self.batch_size])))
        return np.concatenate(parts)
