"""Indexing throughput and query latency, against an rclip-style baseline in the same run.

    python benchmarks/index_speed.py [--images 96] [--arch ViT-B-32] [--clip-model DIR]
                                     [--vectors 10000 100000] [--skip-latency]

Prints one JSON object on stdout (progress on stderr):
- index: images/s of ``retllm index`` (a subprocess, end to end: start-up, scan, decode,
  embed, commit) and of the baseline (open_clip torch fp32, plain ``PIL.Image.open`` +
  open_clip's transform, batches of 32: what rclip does), the ratio, and each process's
  peak RSS. Same architecture, same random weights (seed 0), same 1080p JPEG files.
- latency: p50/p95 ms of an in-process query at each vector count: the ANN/exact search
  alone and text-encode + search, on clustered synthetic vectors (uniform noise is the
  worst case for HNSW and unlike real embeddings).
Generated images and the exported model are cached under $RETLLM_BENCH_DIR
(default ~/.cache/retllm-lite/bench). Random weights: only speed is meaningful here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retllm_lite.cpu import cpu_info

BENCH_DIR = Path(os.environ.get("RETLLM_BENCH_DIR", Path.home() / ".cache" / "retllm-lite" / "bench"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_images(n: int) -> Path:
    from PIL import Image, ImageDraw, ImageFilter

    folder = BENCH_DIR / f"jpeg-1080p-{n}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        # photo-like: smooth gradients, shapes, blur and sensor noise (compresses like a photo)
        base = rng.integers(0, 256, 3)
        x = np.linspace(0, 1, 1920)[None, :, None]
        y = np.linspace(0, 1, 1080)[:, None, None]
        arr = base + x * rng.integers(-100, 100, 3) + y * rng.integers(-100, 100, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(30):
            x0, y0 = int(rng.integers(0, 1800)), int(rng.integers(0, 1000))
            box = (x0, y0, x0 + int(rng.integers(20, 500)), y0 + int(rng.integers(20, 400)))
            d.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img = img.filter(ImageFilter.GaussianBlur(2))
        noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (1080, 1920, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def export_model(arch: str) -> Path:
    out = BENCH_DIR / f"model-{arch}-random"
    if (out / "manifest.json").is_file():
        return out
    from retllm_lite.quantize.clip import export_open_clip

    log(f"exporting {arch} (random init) once to {out}")
    export_open_clip(arch, out, random_init=True, seed=0, log=log)
    return out


BASELINE = r"""
import sys, time, glob, torch, open_clip
from PIL import Image
arch, folder, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
torch.manual_seed(0)
model = open_clip.create_model(arch, pretrained=None, pretrained_text=False).eval()
preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
files = sorted(glob.glob(folder + "/*.jpg"))
vectors = []
with torch.no_grad():
    for i in range(0, len(files), batch):
        images = [preprocess(Image.open(f)) for f in files[i:i + batch]]
        feats = model.encode_image(torch.stack(images))
        vectors.append(feats / feats.norm(dim=-1, keepdim=True))
print(len(torch.cat(vectors)), time.perf_counter() - t0)
"""


def bench_index(folder: Path, model: Path, arch: str, batch: int) -> dict:
    n = len(list(folder.glob("*.jpg")))
    results = {}
    # each run in a fresh interpreter that reports its own peak RSS (VmHWM: unlike
    # ru_maxrss it does not inherit the forking parent's memory)
    wrapper = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "code = 0\n"
        "try:\n"
        "    if sys.argv[0].endswith('.py'):\n"
        "        runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "    else:\n"
        "        runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    code = e.code or 0\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('PEAK_RSS_KB', hwm, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "baseline.py"
        script.write_text(BASELINE)
        runs = {
            "retllm": [
                sys.executable,
                "-c",
                wrapper,
                "retllm_lite",
                "index",
                str(folder),
                "--index",
                str(Path(tmp) / "idx"),
                "--clip-model",
                str(model),
                "--no-progress",
                "--batch-size",
                str(batch),
                "--json",
            ],
            "baseline": [sys.executable, "-c", wrapper, str(script), arch, str(folder), str(batch)],
        }
        for name in ("baseline", "retllm"):
            if name == "retllm":
                import shutil

                shutil.rmtree(Path(tmp) / "idx", ignore_errors=True)
            t0 = time.perf_counter()
            proc = subprocess.run(runs[name], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
            done = json.loads(proc.stdout)["indexed"] if name == "retllm" else int(proc.stdout.split()[0])
            if done != n:
                raise SystemExit(f"{name} embedded {done} of {n} images:\n{proc.stderr[-2000:]}")
            results[name] = {
                "seconds": round(wall, 3),
                "images_per_second": round(n / wall, 3),
                "peak_rss_mib": round(peak_kb / 1024, 1),
            }
            log(
                f"{name}: {n} images in {wall:.1f}s = {n / wall:.2f} img/s, peak RSS {peak_kb / 1024:.0f} MiB"
            )
    results["images"] = n
    results["speedup"] = round(
        results["retllm"]["images_per_second"] / results["baseline"]["images_per_second"], 3
    )
    return results


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(99).standard_normal((max(n // 200, 10), dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_latency(model: Path, counts: list[int], queries: int = 200) -> dict:
    from retllm_lite.encode import load_encoder
    from retllm_lite.index.store import Index

    enc = load_encoder(model)
    dim = enc.info.dim
    out = {}
    texts = [f"a photo of object number {i} on a table" for i in range(queries)]
    enc.embed_texts(texts[:2])  # warm-up
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            data = clustered(n, dim, 0)
            t0 = time.perf_counter()
            with Index.open(tmp, writable=True) as idx:
                idx.set_encoder(enc.info)
                with idx.catalog.transaction() as seq:
                    idx.catalog.db.executemany(
                        "INSERT INTO items(key, modality, source, status, vector_label, vec_seq, updated_at)"
                        " VALUES(?, 'text', 'bench', 'ok', ?, ?, 0)",
                        [(f"item:bench#{i}".encode(), i + 1, seq) for i in range(n)],
                    )
                    idx.catalog.db.executemany(
                        "INSERT INTO vectors(id, vec) VALUES(?, ?)",
                        [(i + 1, data[i].tobytes()) for i in range(n)],
                    )
                ann = idx.update_ann()
            build = time.perf_counter() - t0
            with Index.open(tmp) as idx:
                t0 = time.perf_counter()
                kind = idx.search_kind
                load = time.perf_counter() - t0
                qs = clustered(queries, dim, 1)
                idx.search(qs[0], 10)
                search_ms, total_ms = [], []
                for q, text in zip(qs, texts, strict=True):
                    t0 = time.perf_counter()
                    idx.search(q, 10)
                    search_ms.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    idx.search(enc.embed_texts([text])[0], 10)
                    total_ms.append((time.perf_counter() - t0) * 1000)

            def pct(xs, p):
                return round(float(np.percentile(xs, p)), 3)

            out[str(n)] = {
                "search": kind,
                "ann": ann,
                "build_seconds": round(build, 2),
                "open_seconds": round(load, 3),
                "search_ms": {"p50": pct(search_ms, 50), "p95": pct(search_ms, 95)},
                "text_query_ms": {"p50": pct(total_ms, 50), "p95": pct(total_ms, 95)},
            }
            log(
                f"{n} vectors ({kind}): search p50 {pct(search_ms, 50)} ms, "
                f"text query p50 {pct(total_ms, 50)} ms p95 {pct(total_ms, 95)} ms"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--clip-model", type=Path, help="use this exported model instead of a random one")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vectors", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    model = args.clip_model or export_model(args.arch)
    result = {
        "benchmark": "index_speed",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        # the int8 kernels (VNNI/AMX or plain AVX2) decide speed and rounding
        "cpu": cpu_info(),
        "model": str(model),
        "arch": args.arch,
    }
    if not args.skip_index:
        folder = make_images(args.images)
        result["index"] = bench_index(folder, model, args.arch, args.batch)
    if not args.skip_latency:
        result["latency"] = bench_latency(model, args.vectors)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
