"""Write a verified two-tower ONNX model directory (shared by every CLIP-like exporter).

An exporter hands over the torch modules of both towers plus input makers; this module
exports them with ``torch.onnx.export`` (dynamic batch) or takes an ONNX file the
exporter already made (``Tower.onnx_file``: Hugging Face checkouts go through optimum),
checks parity against torch on fresh random inputs,
builds int8 variants with ``onnxruntime.quantization.quantize_dynamic`` (settings chosen
per tower by measured parity, then speed), and writes ``manifest.json`` last. Everything
is written to a temporary sibling directory and renamed into place, so an interrupted
or failed export never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retllm_lite.atomic_dir import replace_dir
from retllm_lite.cpu import cpu_info
from retllm_lite.encode.manifest import CLIP_FORMAT, FORMAT_VERSION, MANIFEST_NAME
from retllm_lite.errors import BadModelFile, RetllmError
from retllm_lite.hashing import sha256_file

FP32_MIN_COSINE = 0.99999
INT8_MEAN_COSINE = 0.999

# quantize_dynamic settings tried for each tower. Without VNNI, QInt8 needs reduce_range.
INT8_CANDIDATES: list[dict] = [
    {"weight_type": "QUInt8", "per_channel": True, "reduce_range": False},
    {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    {"weight_type": "QInt8", "per_channel": True, "reduce_range": False},
]


class ParityError(RetllmError):
    """The exported model does not reproduce the source model: nothing was written."""


@dataclass
class Tower:
    """One tower to export: a torch module and how to make inputs for it.

    ``module`` is the reference parity is measured against. Without ``onnx_file`` it is
    also what ``torch.onnx.export`` exports; with it, that ready-made ONNX file (made by
    another exporter, described by ``exporter``) is verified and used instead.
    """

    name: str  # "image" or "text"
    module: object  # torch.nn.Module mapping input tensors to (unnormalised) embeddings
    input_names: list[str]
    make_inputs: Callable[[np.random.Generator, int], dict[str, np.ndarray]]
    extra: dict = field(default_factory=dict)
    onnx_file: Path | None = None
    exporter: str | None = None
    output: str | None = None  # the ONNX output holding the embedding (None: the first)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def _torch_run(tower: Tower, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = tower.module(*[torch.from_numpy(feeds[n]) for n in tower.input_names])
    return out.float().numpy()


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_run(session, feeds: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    outputs = [output] if output else None
    return session.run(outputs, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def export_onnx(tower: Tower, path: Path, log: Callable[[str], None]) -> str:
    """torch -> ONNX with a dynamic batch axis; returns the exporter used."""
    import torch

    rng = np.random.default_rng(0)
    example = tuple(torch.from_numpy(v) for v in tower.make_inputs(rng, 2).values())
    quiet = io.StringIO()
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with contextlib.redirect_stdout(quiet):
            torch.onnx.export(
                tower.module,
                example,
                str(path),
                input_names=tower.input_names,
                output_names=[f"{tower.name}_embeds"],
                dynamo=True,
                external_data=False,
                dynamic_shapes=tuple({0: batch} for _ in tower.input_names),
                verbose=False,
            )
        return f"torch.onnx dynamo (torch {torch.__version__})"
    except Exception as exc:  # the dynamo exporter does not cover every model yet
        log(
            f"  dynamo exporter failed on the {tower.name} tower ({type(exc).__name__}); "
            "using the TorchScript exporter"
        )
        with contextlib.redirect_stdout(quiet):
            torch.onnx.export(
                tower.module,
                example,
                str(path),
                input_names=tower.input_names,
                output_names=[f"{tower.name}_embeds"],
                dynamo=False,
                opset_version=17,
                dynamic_axes={
                    **{n: {0: "batch"} for n in tower.input_names},
                    f"{tower.name}_embeds": {0: "batch"},
                },
            )
        return f"torch.onnx torchscript opset 17 (torch {torch.__version__})"


def check_parity(tower: Tower, session, batches=(1, 5), seed: int = 1234) -> dict:
    """Cosine and max abs difference between ONNX and torch on fresh random inputs."""
    rng = np.random.default_rng(seed)
    cos, max_abs = [], 0.0
    for b in batches:
        feeds = tower.make_inputs(rng, b)
        ref = _torch_run(tower, feeds)
        got = _ort_run(session, feeds, tower.output)
        if got.shape != ref.shape:
            raise ParityError(f"{tower.name} tower: ONNX output shape {got.shape} != torch {ref.shape}")
        cos.extend(_cosines(got, ref).tolist())
        max_abs = max(max_abs, float(np.abs(got - ref).max()))
    return {
        "n": len(cos),
        "min_cosine": float(min(cos)),
        "mean_cosine": float(np.mean(cos)),
        "max_abs_diff": max_abs,
    }


def _time_session(tower: Tower, session, batch: int = 8, repeats: int = 5) -> float:
    feeds = tower.make_inputs(np.random.default_rng(7), batch)
    _ort_run(session, feeds, tower.output)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ort_run(session, feeds, tower.output)
        best = min(best, time.perf_counter() - t0)
    return best / batch


def quantize_tower(
    tower: Tower, fp32_path: Path, out_path: Path, log, min_mean_cosine: float = INT8_MEAN_COSINE
) -> dict:
    """Try each int8 setting; keep the fastest that meets the parity bar (``chosen`` None if none does).

    Which settings pass depends on the CPU: onnxruntime's int8 kernels (VNNI, AMX or plain
    AVX2) round differently, so the same model can keep an int8 tower on one machine and
    fall back to fp32 on another. The caller records the CPU next to the result.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic logs a pre-processing suggestion on the root logger for every call
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    tried = []
    best: tuple[float, dict, Path] | None = None
    for i, cand in enumerate(INT8_CANDIDATES):
        tmp = out_path.with_name(f"{out_path.stem}.cand{i}.onnx")
        quantize_dynamic(
            str(fp32_path),
            str(tmp),
            weight_type=getattr(QuantType, cand["weight_type"]),
            per_channel=cand["per_channel"],
            reduce_range=cand["reduce_range"],
        )
        sess = _ort_session(tmp)
        parity = check_parity(tower, sess)
        sec = _time_session(tower, sess)
        ok = parity["mean_cosine"] >= min_mean_cosine
        tried.append({**cand, **parity, "ms_per_item": round(sec * 1000, 3), "passed": ok})
        log(
            f"  int8 {tower.name} {cand['weight_type']} per_channel={cand['per_channel']} "
            f"reduce_range={cand['reduce_range']}: mean cosine {parity['mean_cosine']:.6f}, "
            f"{sec * 1000:.2f} ms/item{'' if ok else ' (below the bar)'}"
        )
        if ok and (best is None or sec < best[0]):
            if best is not None:
                best[2].unlink()
            best = (sec, tried[-1], tmp)
        else:
            tmp.unlink()
    if best is None:
        return {"chosen": None, "kept": "fp32", "candidates": tried}
    os.replace(best[2], out_path)
    return {
        "chosen": {k: best[1][k] for k in ("weight_type", "per_channel", "reduce_range")},
        "kept": "int8",
        "parity": {k: best[1][k] for k in ("n", "min_cosine", "mean_cosine", "max_abs_diff")},
        "candidates": tried,
    }


def _file_entry(path: Path, output: str | None = None) -> dict:
    entry = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {**entry, "output": output} if output else entry


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "open-clip-torch", "transformers", "optimum-onnx", "onnx", "onnxruntime"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise RetllmError(f"{out_dir}: already exists and is not empty", hint="pass --force to replace it")


def write_model_dir(
    out_dir: str | Path,
    towers: list[Tower],
    meta: dict,
    int8: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
    extra_files: Sequence[Path] = (),
    int8_min_mean_cosine: float | Mapping[str, float] = INT8_MEAN_COSINE,
) -> dict:
    """Export, verify and write the towers plus manifest.json into ``out_dir`` atomically.

    ``extra_files`` (tokenizer and config files) are copied next to the towers.
    ``int8_min_mean_cosine`` is the parity bar an int8 tower must meet (one value, or one
    per tower name); a tower that no setting brings over it stays fp32 in the int8 variant.
    The manifest's ``quantization`` records the bar, the CPU the choice was made on, and per
    tower what was kept.
    """
    bars = (
        {t.name: float(int8_min_mean_cosine.get(t.name, INT8_MEAN_COSINE)) for t in towers}
        if isinstance(int8_min_mean_cosine, Mapping)
        else {t.name: float(int8_min_mean_cosine) for t in towers}
    )
    out_dir = Path(out_dir).expanduser().resolve()
    prepare_out_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    cpu = cpu_info()
    try:
        variants: dict[str, dict] = {"fp32": {}}
        parity: dict[str, dict] = {"fp32": {}}
        quant: dict[str, dict] = {}
        exporters = {}
        for tower in towers:
            t0 = time.perf_counter()
            fp32 = work / f"{tower.name}.onnx"
            if tower.onnx_file is not None:
                shutil.copyfile(tower.onnx_file, fp32)
                exporters[tower.name] = tower.exporter or "external"
            else:
                exporters[tower.name] = export_onnx(tower, fp32, log)
            p = check_parity(tower, _ort_session(fp32))
            done = "checked" if tower.onnx_file is not None else "exported"
            log(
                f"  {tower.name} tower {done} in {time.perf_counter() - t0:.1f}s: "
                f"min cosine {p['min_cosine']:.7f}, max abs diff {p['max_abs_diff']:.2e}"
            )
            if p["min_cosine"] < FP32_MIN_COSINE:
                raise ParityError(
                    f"{tower.name} tower: ONNX fp32 min cosine {p['min_cosine']:.6f} to torch is below "
                    f"{FP32_MIN_COSINE}; nothing was written",
                    hint="this architecture does not export faithfully; report it",
                )
            variants["fp32"][tower.name] = _file_entry(fp32, tower.output)
            parity["fp32"][tower.name] = p
            if int8:
                q = quantize_tower(tower, fp32, work / f"{tower.name}.int8.onnx", log, bars[tower.name])
                quant[tower.name] = q
                if q["chosen"] is not None:
                    variants.setdefault("int8", {})[tower.name] = _file_entry(
                        work / f"{tower.name}.int8.onnx", tower.output
                    )
                    parity.setdefault("int8", {})[tower.name] = q["parity"]
        if int8 and "int8" in variants:
            # "int8 where it pays": a tower no int8 setting reproduces stays fp32 in the int8 variant.
            for tower in towers:
                if tower.name not in variants["int8"]:
                    log(
                        f"  no int8 setting met mean cosine {bars[tower.name]} for the {tower.name} "
                        f"tower on this CPU ({cpu['int8_kernels']} int8 kernels): the int8 variant "
                        "uses its fp32 file"
                    )
                    variants["int8"][tower.name] = dict(variants["fp32"][tower.name])
                    parity["int8"][tower.name] = parity["fp32"][tower.name]
        elif int8:
            log(
                f"  no int8 setting met the parity bar for either tower on this CPU "
                f"({cpu['int8_kernels']} int8 kernels): fp32 only"
            )
        manifest = {
            "format": CLIP_FORMAT,
            "format_version": FORMAT_VERSION,
            **meta,
            "variants": variants,
            "default_variant": "int8" if "int8" in variants else "fp32",
            "parity": parity,
            "parity_thresholds": {
                "fp32_min_cosine": FP32_MIN_COSINE,
                "int8_mean_cosine": bars if len(set(bars.values())) > 1 else next(iter(bars.values())),
            },
            "quantization": {
                "method": "onnxruntime.quantization.quantize_dynamic",
                # The choice depends on the int8 kernels of the CPU it was made on.
                "cpu": {k: cpu[k] for k in ("model", "machine", "features", "vnni", "int8_kernels")},
                "towers": quant,
            }
            if int8
            else {"method": None, "towers": {}},
            "exporter": exporters,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for src in extra_files:
            shutil.copyfile(src, work / Path(src).name)
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        for f in work.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)
        replace_dir(work, out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def check_written(out_dir: Path) -> None:
    """Load the written model through the torch-free encoder, as search will."""
    from retllm_lite.encode import load_encoder

    try:
        enc = load_encoder(out_dir)
        enc.embed_texts(["a photo"])
    except RetllmError:
        raise
    except Exception as exc:
        raise BadModelFile(f"{out_dir}: the written model does not load ({exc})") from exc
