"""Fine-stage cost at a real model's shape: seconds per text -> image query, by cache state.

    python benchmarks/rerank_real_shape.py [--shape qwen2-vl-2b] [--type q4_k_m] [--k 5]
                                           [--threads N] [--image-size 448 448]

Builds (once, cached under $RETLLM_BENCH_DIR) a random-weight checkout with the exact
published architecture (``quantize/real_shape.py``), converts it with the same path as
``retllm quantize vlm`` (text GGUF at ``--type``, f16 projector), then times one text query
against k candidate photos in four states, in this one run:

- naive: every pair a fresh prompt, every image encoded (``fast=False``);
- cold: fast path, nothing cached (new embedding and KV-state caches);
- prepared: the images' projector embeddings known, no KV states (what an index-time
  preparation gives);
- warm: KV states of header + candidate image saved by an earlier query: a new query
  decodes only its own text.

Enhancement off (random weights make any gate meaningless). Prints one JSON object on
stdout (with the CPU, llama.cpp's system info and peak RSS) and a table on stderr. The
ratios are the comparison; absolute seconds depend on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from retllm_lite.cpu import cpu_info, physical_cores

BENCH_DIR = Path(os.environ.get("RETLLM_BENCH_DIR", Path.home() / ".cache" / "retllm-lite" / "bench"))
QUERIES = ["a dog running on the beach", "two cats under a tree", "a red car on a street"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_dir(shape: str, qtype: str) -> Path:
    from retllm_lite.quantize.converter import get_converter
    from retllm_lite.quantize.real_shape import build_real_shape
    from retllm_lite.quantize.vlm import convert_vlm

    out = BENCH_DIR / f"{shape}-{qtype}"
    if (out / "manifest.json").is_file():
        return out
    hf = BENCH_DIR / f"{shape}-hf"
    if not (hf / "config.json").is_file():
        log(f"building a random-weight {shape} checkout in {hf} ...")
        t = time.perf_counter()
        build_real_shape(shape, hf)
        log(f"  built in {time.perf_counter() - t:.0f} s")
    log(f"converting to {qtype} + f16 projector ...")
    t = time.perf_counter()
    converter = get_converter(root=BENCH_DIR / "converter")
    convert_vlm(hf, out, text_type=qtype, mmproj_type="f16", converter=converter,
                name=f"{shape}-random", n_threads=physical_cores())  # fmt: skip
    log(f"  converted in {time.perf_counter() - t:.0f} s")
    return out


def photos(n: int, size: tuple[int, int]) -> list:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from vlm_fixtures import scene

    return [scene(i, size) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--image-size", type=int, nargs=2, default=[448, 448])
    args = ap.parse_args()

    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
    from retllm_lite.rerank.manifest import read_manifest
    from retllm_lite.rerank.pairs import Item
    from retllm_lite.rerank.state_cache import StateCache

    files = read_manifest(model_dir(args.shape, args.type))
    threads = args.threads or physical_cores()
    cands = [Item(image=im) for im in photos(args.k, tuple(args.image_size))]
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        states = StateCache("bench", root=Path(tmp) / "states", disk_mb=8192)
        with LlamaMtmdScorer(files.model, files.mmproj, n_threads=threads, state_cache=states) as sc:
            t = time.perf_counter()
            naive = sc.answer_probs(Item(text=QUERIES[0]), cands, fast=False)
            rows["naive"] = time.perf_counter() - t
            sc.clear_caches()
            t = time.perf_counter()
            cold = sc.answer_probs(Item(text=QUERIES[0]), cands)  # saves the KV states
            rows["cold"] = time.perf_counter() - t
            with LlamaMtmdScorer(files.model, files.mmproj, n_threads=threads) as plain:
                plain._embeddings.update(sc._embeddings)  # embeddings known, no KV states
                t = time.perf_counter()
                prepared = plain.answer_probs(Item(text=QUERIES[1]), cands)
                rows["prepared"] = time.perf_counter() - t
            t = time.perf_counter()
            warm = sc.answer_probs(Item(text=QUERIES[1]), cands)
            rows["warm"] = time.perf_counter() - t
            restored = sc.stats.states_restored
            n_image_tokens = sc.layout(Item(text=QUERIES[0]), cands[0])
        state_bytes = [p.stat().st_size for p in (Path(tmp) / "states").glob("*.kv")]
    diff_cold = max(abs(a.p_true - b.p_true) for a, b in zip(cold, naive, strict=True))
    diff_warm = max(abs(a.p_true - b.p_true) for a, b in zip(warm, prepared, strict=True))
    result = {
        "benchmark": "rerank_real_shape",
        "shape": args.shape,
        "text_type": args.type,
        "random_weights": True,
        "k": args.k,
        "image_size": args.image_size,
        "image_tokens": sum(s.n_tokens for s in n_image_tokens if s.kind == "image"),
        "threads": threads,
        "seconds_per_query": rows,
        "ratios_vs_naive": {k: rows["naive"] / v for k, v in rows.items()},
        "states_restored": restored,
        "max_abs_p_true_diff": {"cold_vs_naive": diff_cold, "warm_vs_prepared": diff_warm},
        "kv_state_bytes_per_image": max(state_bytes, default=0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "model_bytes": Path(files.model).stat().st_size,
        "mmproj_bytes": Path(files.mmproj).stat().st_size,
        "cpu": cpu_info(),
    }
    import llama_cpp

    result["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    print(json.dumps(result, indent=2))
    log(f"{args.shape} {args.type}, k={args.k}, {result['image_tokens']} image tokens, {threads} threads")
    for k, v in rows.items():
        log(f"  {k:<9} {v:8.2f} s/query   {rows['naive'] / v:5.1f}x naive")
    log(f"  peak RSS {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
