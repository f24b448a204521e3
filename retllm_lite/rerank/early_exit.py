"""The paper's gating trigger: the next-token entropy of early exits at middle layers.

The authors' code (MemVR-style retracing in their ``modeling_qwen2_5_vl.py``) computes,
after each decoder layer ``l`` (0-based), the normalised top-10 entropy of
``lm_head(hidden_state)`` at the last position, and re-injects the visual tokens at the
first layer with ``starting_layer < l < ending_layer`` (5 and 16) whose entropy exceeds
0.75. Here that decision is "does any layer in ``[first, last]`` exceed the threshold",
i.e. the maximum over those layers (``EarlyExit.entropy``); what happens when it fires is
this project's re-insertion of the image (``prompts``), not their feed-forward injection.

How it is read from llama.cpp, which has no early-exit API:

* ``LayerCapture`` is the context's eval callback (``cb_eval``): it asks the scheduler for
  the tensors ``l_out-{l}`` (every llama.cpp text model names each layer's output so) and
  copies the last row of each, i.e. the last position of the latest decode.
* ``OutputHead`` applies the model's final RMS norm and output matrix (``output.weight``,
  or the tied ``token_embd.weight``) in numpy, read from the GGUF with the ``gguf``
  package (any quantisation is dequantised once; f32 tensors stay f32, others are kept in
  f16: 466 MB for Qwen2-VL-2B's 151936 x 1536 head). Unlike the authors' code, the final
  norm is applied (the usual logit lens); without it the scale of the hidden state, not
  the model's belief, decides the entropy.

Only the last position of one sequence per decode is read, so capture needs
``batch_size`` 1 (one candidate per decode).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retllm_lite.errors import BadInput, BadModelFile, require
from retllm_lite.rerank.logits import softmax, topk_entropy

GGML_TYPE_F32 = 0
_CHUNK_ROWS = 16384  # output-matrix rows per matmul (bounds the f32 temporary)


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


assert ctypes.sizeof(GgmlTensor) == 336  # GGML_TENSOR_SIZE on 64-bit platforms


@dataclass(frozen=True)
class ExitLayers:
    """Decoder layers (0-based, as llama.cpp's ``l_out-N`` and the authors' loop count them)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last:
            raise BadInput(
                f"bad early-exit layers {self.first}-{self.last}", hint="use exit-FIRST-LAST, 0-based"
            )

    @classmethod
    def parse(cls, signal: str) -> ExitLayers:
        """``exit-L`` or ``exit-FIRST-LAST`` (inclusive)."""
        body = signal.removeprefix("exit-")
        try:
            a, _, b = body.partition("-")
            return cls(int(a), int(b) if b else int(a))
        except ValueError:
            raise BadInput(
                f"bad gate signal {signal!r}",
                hint="early exits are exit-L or exit-FIRST-LAST (0-based layers)",
            ) from None

    @property
    def layers(self) -> range:
        return range(self.first, self.last + 1)


class LayerCapture:
    """llama.cpp eval callback keeping the last row of chosen layers' outputs (f32, CPU)."""

    def __init__(self, layers: Iterable[int], llama_cpp_module):
        self.layers = tuple(layers)
        self._names = {f"l_out-{il}".encode(): il for il in self.layers}
        self.rows: dict[int, np.ndarray] = {}
        self.error: str | None = None
        # keep a reference: llama.cpp holds only the C pointer
        self.callback = llama_cpp_module.ggml_backend_sched_eval_callback(self._on_tensor)

    def _on_tensor(self, tensor_ptr, ask, _user_data) -> bool:
        try:
            t = ctypes.cast(tensor_ptr, ctypes.POINTER(GgmlTensor)).contents
            il = self._names.get(t.name)
            if ask:
                return il is not None
            if il is None:
                return True
            if t.type != GGML_TYPE_F32 or not t.data:
                self.error = f"layer output {t.name.decode()} is not a host f32 tensor"
                return True
            n_embd, n_rows = int(t.ne[0]), int(t.ne[1])
            addr = t.data + (n_rows - 1) * int(t.nb[1])
            self.rows[il] = np.ctypeslib.as_array((ctypes.c_float * n_embd).from_address(addr)).copy()
        except Exception as exc:  # an exception must not cross into C
            self.error = f"{type(exc).__name__}: {exc}"
        return True

    def take(self) -> dict[int, np.ndarray]:
        """The rows of the latest decode, then forget them."""
        if self.error:
            raise BadModelFile(f"early-exit capture failed: {self.error}")
        missing = [il for il in self.layers if il not in self.rows]
        if missing:
            raise BadInput(
                f"the model has no layer output for layers {missing}",
                hint="choose early-exit layers below the model's layer count",
            )
        rows, self.rows = self.rows, {}
        return rows


class OutputHead:
    """Final RMS norm + output matrix of a GGUF text model, for early-exit logits in numpy."""

    def __init__(self, norm: np.ndarray, weight: np.ndarray, eps: float, softcap: float | None = None):
        self.norm = norm.astype(np.float32)
        self.weight = weight  # (n_vocab, n_embd), f32 or f16
        self.eps = float(eps)
        self.softcap = softcap

    @classmethod
    def from_gguf(cls, path: str | Path) -> OutputHead:
        gguf = require("gguf", "rerank", "Early-exit gating")
        from gguf.quants import dequantize

        reader = gguf.GGUFReader(str(path))
        fields = reader.fields

        def field(name: str):
            f = fields.get(name)
            return None if f is None else f.contents()

        arch = field("general.architecture")
        eps = field(f"{arch}.attention.layer_norm_rms_epsilon")
        if eps is None:
            raise BadModelFile(f"{path}: no RMS-norm epsilon ({arch}): early exits need an RMS-norm model")
        tensors = {t.name: t for t in reader.tensors}
        out = tensors.get("output.weight") or tensors.get("token_embd.weight")
        norm = tensors.get("output_norm.weight")
        if out is None or norm is None:
            raise BadModelFile(f"{path}: no output norm / output matrix to read early exits with")

        def array(t) -> np.ndarray:
            a = dequantize(t.data, t.tensor_type)
            return np.asarray(a).reshape([int(d) for d in reversed(t.shape)])

        weight = array(out)
        if out.tensor_type != gguf.GGMLQuantizationType.F32:
            weight = weight.astype(np.float16)
        softcap = field(f"{arch}.final_logit_softcapping")
        return cls(array(norm).reshape(-1), weight, eps, float(softcap) if softcap else None)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        h = np.asarray(hidden, dtype=np.float64)
        h = (h / math.sqrt(float(np.mean(h * h)) + self.eps)).astype(np.float32) * self.norm
        out = np.empty(self.weight.shape[0], dtype=np.float32)
        for a in range(0, self.weight.shape[0], _CHUNK_ROWS):
            out[a : a + _CHUNK_ROWS] = self.weight[a : a + _CHUNK_ROWS].astype(np.float32) @ h
        if self.softcap:
            out = np.tanh(out / self.softcap) * self.softcap
        return out


def exit_entropies(head: OutputHead, rows: dict[int, np.ndarray]) -> dict[int, float]:
    """Normalised top-10 next-token entropy of each captured layer's early exit."""
    return {il: topk_entropy(softmax(head.logits(h))) for il, h in sorted(rows.items())}
