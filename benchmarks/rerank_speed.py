"""Fine-stage speed: ms per candidate, naive path vs fast path, in the same run.

    python benchmarks/rerank_speed.py [--model M.gguf --mmproj MMPROJ.gguf]
                                      [--k 5 10 20] [--repeats 3] [--threads N]
                                      [--batch-size 4] [--image-size 640 480]

Prints one JSON object on stdout and a table on stderr. For each task, k and enhancement
mode (off, gated at the paper's 0.75, always) it times:

- naive: every pair a fresh prompt, every image encoded every time (``fast=False``);
- fast: images encoded once, shared prefix evaluated once and copied per candidate,
  candidates one at a time (``batch_size`` 1, bit-identical scores);
- fast-batchN: the same with N candidates per batched ``llama_decode``.

"cold" clears the scorer's in-memory caches before every call (a fresh query over images
never seen: what ``retllm search --rerank`` does once per query); "warm" keeps them (the
query's prefix and all image embeddings already known, e.g. from the on-disk embedding
cache and a repeated query). Tasks: image -> text (k captions for one query image: the
image sits in the shared prefix) and text -> image (k candidate images: each must be
encoded). Each figure is the median of ``--repeats`` calls after one warm-up call.

Without --model, a tiny random Gemma3 is built and converted (cached under
$RETLLM_BENCH_DIR, default ~/.cache/retllm-lite/bench). Its images are 16 tokens, so the
speed-up is bounded by the text part (see docs/rerank.md); ``--vision 256-tokens`` builds
one whose images are 256 tokens, as real Gemma 3's, so a pair costs what it costs on a
real VLM in proportion (image tokens dominate), still on tiny random weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from retllm_lite.cpu import cpu_info

BENCH_DIR = Path(os.environ.get("RETLLM_BENCH_DIR", Path.home() / ".cache" / "retllm-lite" / "bench"))
MODES = ("off", "gated", "always")

CAPTIONS = [
    "a dog running on the beach",
    "two cats sitting under a tree",
    "a red car parked on the street",
    "a man riding a horse near the river",
    "blue sky over a large city",
    "a small yellow bird flying over grass",
    "a child playing with a ball in the park",
    "a white boat on the water at night",
    "a plate of food on a wooden table",
    "a train crossing a bridge in the snow",
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tiny_model(shape: str = "tiny") -> tuple[Path, Path]:
    from retllm_lite.quantize.tiny_vlm import REAL_TOKEN_COUNT, TINY, build_tiny_gemma3
    from retllm_lite.quantize.vlm import convert_vlm

    from retllm_lite.rerank.manifest import read_manifest

    suffix = "" if shape == "tiny" else "-256tok"
    out = BENCH_DIR / f"tiny-gemma3{suffix}-f16"
    if not (out / "manifest.json").is_file():
        hf = BENCH_DIR / f"tiny-gemma3{suffix}-hf"
        if not (hf / "config.json").is_file():
            log(f"building the tiny Gemma3 ({shape} vision) in {hf}")
            build_tiny_gemma3(hf, vision=TINY if shape == "tiny" else REAL_TOKEN_COUNT)
        log(f"converting to {out}")
        convert_vlm(hf, out, text_type="f16", mmproj_type="f16", name="tiny-gemma3", overwrite=True)
    files = read_manifest(out)
    return files.model, files.mmproj


def images(n: int, size: tuple[int, int]) -> list[Any]:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        w, h = size
        base = rng.integers(0, 256, 3)
        x = np.linspace(0, 1, w)[None, :, None]
        y = np.linspace(0, 1, h)[:, None, None]
        arr = base + x * rng.integers(-100, 100, 3) + y * rng.integers(-100, 100, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            box = (x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out.append(img)
    return out


def timed(scorer, query, cands, *, enhance: str, fast: bool, cold: bool, repeats: int):
    def once():
        if cold:
            scorer.clear_caches()
        t0 = time.perf_counter()
        res = scorer.score_pairs(query, cands, enhance=enhance, fast=fast)
        return (time.perf_counter() - t0) * 1000, res

    once()  # warm-up (weights paged in, caches filled for the warm case)
    runs = [once() for _ in range(repeats)]
    ms = statistics.median(r[0] for r in runs)
    return ms, runs[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--mmproj", type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--image-size", type=int, nargs=2, default=[640, 480])
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument(
        "--vision",
        choices=["tiny", "256-tokens"],
        default="tiny",
        help="tiny random model's image side: 16 tokens per image, or 256 like real Gemma 3",
    )
    args = ap.parse_args()

    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
    from retllm_lite.rerank.scorer import Item

    if args.model:
        model, mmproj = args.model, args.mmproj
    else:
        model, mmproj = tiny_model(args.vision)
    kmax = max(args.k)
    pics = images(kmax + 1, tuple(args.image_size))
    captions = [CAPTIONS[i % len(CAPTIONS)] + ("" if i < len(CAPTIONS) else f" ({i})") for i in range(kmax)]
    tasks = {
        "image->text": lambda k: (Item(image=pics[kmax]), captions[:k]),
        "text->image": lambda k: (Item(text=CAPTIONS[0]), [Item(image=p) for p in pics[:k]]),
    }
    common = {"n_ctx": args.n_ctx, "n_threads": args.threads}
    scorers = {
        "naive": LlamaMtmdScorer(model, mmproj, **common),
        "fast": None,
        f"fast-batch{args.batch_size}": LlamaMtmdScorer(model, mmproj, batch_size=args.batch_size, **common),
    }
    scorers["fast"] = scorers["naive"]  # same scorer object, fast=True
    rows: list[dict[str, Any]] = []
    for task, make in tasks.items():
        for k in args.k:
            query, cands = make(k)
            for mode in MODES:
                enhance = "gated:0.75" if mode == "gated" else mode
                base_ms, base = timed(scorers["naive"], query, cands, enhance=enhance, fast=False,
                                      cold=True, repeats=args.repeats)  # fmt: skip
                fired = sum(s.enhanced for s in base)
                rows.append(dict(task=task, k=k, enhance=mode, path="naive", cache="cold",
                                 ms_per_candidate=base_ms / k, enhanced=fired, speedup=1.0))  # fmt: skip
                for path in ("fast", f"fast-batch{args.batch_size}"):
                    for cache in ("cold", "warm"):
                        ms, res = timed(scorers[path], query, cands, enhance=enhance, fast=True,
                                        cold=cache == "cold", repeats=args.repeats)  # fmt: skip
                        diff = max(abs(a.p_true - b.p_true) for a, b in zip(res, base, strict=True))
                        rows.append(dict(task=task, k=k, enhance=mode, path=path, cache=cache,
                                         ms_per_candidate=ms / k, enhanced=sum(s.enhanced for s in res),
                                         speedup=base_ms / ms, max_abs_diff_vs_naive=diff))  # fmt: skip
                cells = [f"{r['path']}/{r['cache']} {r['ms_per_candidate']:6.2f} ({r['speedup']:.1f}x)"
                         for r in rows[-4:]]  # fmt: skip
                log(f"{task:12} k={k:<3} {mode:6} naive {base_ms / k:7.2f} ms/cand | " + " | ".join(cells))
    for s in {id(v): v for v in scorers.values() if v is not None}.values():
        s.close()
    import llama_cpp

    print(json.dumps({
        "model": str(model), "mmproj": str(mmproj), "tiny_random_model": args.model is None,
        "vision": None if args.model else args.vision,
        "threads": args.threads or os.cpu_count(), "batch_size": args.batch_size,
        "image_size": args.image_size, "repeats": args.repeats,
        "llama_cpp_python": llama_cpp.__version__, "machine": platform.machine(),
        "processor": platform.processor(), "cpu_count": os.cpu_count(), "cpu": cpu_info(),
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode().strip(), "results": rows,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
