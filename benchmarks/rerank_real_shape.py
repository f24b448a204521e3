"""Fine-stage cost at a real model's shape: seconds per query, by direction, k and cache state.

    python benchmarks/rerank_real_shape.py [--shape qwen2-vl-2b|smolvlm-500m|gemma-3-4b] [--type q4_k_m]
        [--mmproj-type q8_0|f16] [--k 5 10] [--directions t2i i2t] [--reference float32|bfloat16|none]
        [--threads N] [--image-size 448 448]

Builds (once, cached under $RETLLM_BENCH_DIR) a random-weight checkout with the exact
published architecture (``quantize/real_shape.py``), converts it with the same path as
``retllm quantize vlm`` (text GGUF at ``--type``, projector at ``--mmproj-type``: q8_0 by
default, the file the registry's qwen2-vl-2b pulls; f16 as the issue's first figures), then times one query
against k candidates, in this one run, in a subprocess of its own holding one scorer (so its
peak RSS is the scorer's):

text -> image (the photo-search case; candidate image before the query text):
- naive: every pair a fresh prompt, every image encoded (``fast=False``);
- cold: fast path, nothing cached (new embedding and KV-state caches);
- prepared: the images' projector embeddings known, no KV states (``retllm prepare-rerank``
  without states);
- warm: KV states of header + candidate image saved by an earlier query: a new query
  decodes only its own text.

image -> text (query image, k captions; the image is in the prefix every candidate shares):
- naive; cold (the query image encoded, the prefix decoded once);
- prepared: the query image's embeddings known (an indexed photo: "more like this");
- warm: the prefix still held from the query before (the same image, other candidates).

The reference: the same checkout in transformers on the CPU (``--reference`` dtype; the
paper's code runs one forward per pair), on the same prompts (token ids from the scorer's
layout, pixels from the checkout's own processor), in a second subprocess.

Enhancement off (random weights make any gate meaningless). Prints one JSON object on stdout
(with the CPU, llama.cpp's system info and each part's peak RSS) and a table on stderr. The
ratios are the comparison; absolute seconds depend on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retllm_lite.cpu import cpu_info, physical_cores

BENCH_DIR = Path(os.environ.get("RETLLM_BENCH_DIR", Path.home() / ".cache" / "retllm-lite" / "bench"))
TESTS = Path(__file__).resolve().parents[1] / "tests"
QUERIES = ["a dog running on the beach", "two cats under a tree", "a red car on a street"]
CAPTIONS = [
    "A dog runs along the beach at sunset.",
    "Two cats sleep under an old oak tree.",
    "A red car is parked on a narrow street.",
    "A bowl of fruit stands on a wooden table.",
    "Children fly a kite in a green park.",
    "A lighthouse on a rocky coast in fog.",
    "A cyclist rides past a row of shops.",
    "Snow covers the roofs of a small village.",
    "A man reads a newspaper on a bench.",
    "Boats are moored in a quiet harbour.",
]
KINDS = {"qwen2-vl-2b": "qwen2vl", "smolvlm-500m": "idefics3", "gemma-3-4b": "gemma3"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_closed_windows: list[float] = []  # peak RSS of each window closed by reset_peak_rss


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM).

    The reset also lowers ``ru_maxrss``, so the closing window's peak is kept for
    ``process_peak_rss_mb``.
    """
    _closed_windows.append(window_peak_rss_mb())
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def window_peak_rss_mb() -> float:
    """Peak RSS since the last ``reset_peak_rss`` (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def process_peak_rss_mb() -> float:
    """Peak RSS over the whole process, across every reset window."""
    return max([window_peak_rss_mb(), *_closed_windows])


def timed_peak(fn, *args, **kwargs):
    """``timed`` plus the peak RSS while ``fn`` ran."""
    reset_peak_rss()
    dt, out = timed(fn, *args, **kwargs)
    return dt, out, window_peak_rss_mb()


def model_dirs(shape: str, qtype: str, mmproj_type: str) -> tuple[Path, Path]:
    """(HF checkout, converted model folder), built once."""
    out = (
        BENCH_DIR / f"{shape}-{qtype}"
        if mmproj_type == "f16"
        else BENCH_DIR / f"{shape}-{qtype}-{mmproj_type}"
    )
    hf = BENCH_DIR / f"{shape}-hf"
    if not (hf / "config.json").is_file():
        from retllm_lite.quantize.real_shape import build_real_shape

        log(f"building a random-weight {shape} checkout in {hf} ...")
        t = time.perf_counter()
        build_real_shape(shape, hf)
        log(f"  built in {time.perf_counter() - t:.0f} s")
    if not (out / "manifest.json").is_file():
        from retllm_lite.quantize.converter import get_converter
        from retllm_lite.quantize.vlm import convert_vlm

        log(f"converting to {qtype} + {mmproj_type} projector ...")
        t = time.perf_counter()
        converter = get_converter(root=BENCH_DIR / "converter")
        convert_vlm(hf, out, text_type=qtype, mmproj_type=mmproj_type, converter=converter,
                    name=f"{shape}-random", n_threads=physical_cores())  # fmt: skip
        log(f"  converted in {time.perf_counter() - t:.0f} s")
    return hf, out


def checkout_parameters(hf: Path) -> int:
    """Parameters in a safetensors checkout, from the files' headers (nothing loaded)."""
    total = 0
    for path in sorted(hf.glob("*.safetensors")):
        with open(path, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total


def photos(n: int, size: tuple[int, int], offset: int = 0) -> list:
    sys.path.insert(0, str(TESTS))
    from vlm_fixtures import scene

    return [scene(offset + i, size) for i in range(n)]


def cases(ks: list[int], directions: list[str], size: tuple[int, int]):
    """(name, query, candidates) per direction and k; the same inputs for both runtimes."""
    from retllm_lite.rerank.pairs import Item

    for k in ks:
        for d in directions:
            if d == "t2i":
                yield f"t2i-k{k}", [Item(text=q) for q in QUERIES], [Item(image=im) for im in photos(k, size)]
            else:
                [image] = photos(1, size, offset=100 + k)
                yield f"i2t-k{k}", [Item(image=image)], [Item(text=c) for c in (CAPTIONS * 2)[:k]]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def max_diff(a, b) -> float:
    return max(abs(x.p_true - y.p_true) for x, y in zip(a, b, strict=True))


def run_llama(args: argparse.Namespace, model: Path, layouts_out: Path) -> dict:
    """Every case's four states on one scorer; saves each pair's prompt layout for the reference."""
    from retllm_lite.rerank.llama_mtmd import LlamaMtmdScorer
    from retllm_lite.rerank.manifest import read_manifest
    from retllm_lite.rerank.state_cache import StateCache

    files = read_manifest(model)
    threads = args.threads or physical_cores()
    size = tuple(args.image_size)
    result: dict = {"threads": threads, "cases": {}}
    layouts: dict = {}
    scorer = LlamaMtmdScorer(files.model, files.mmproj, n_threads=threads)
    result["rss_after_load_mb"] = window_peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp, scorer as sc:
        for name, queries, cands in cases(args.k, args.directions, size):
            states = StateCache("bench", root=Path(tmp) / name, disk_mb=16384)
            sc.clear_caches()
            sc.state_cache = states
            rows: dict[str, float] = {}
            peaks: dict[str, float] = {}  # peak RSS (MiB) within each state's query
            q0, q1 = queries[0], queries[min(1, len(queries) - 1)]
            rows["naive"], naive, peaks["naive"] = timed_peak(sc.answer_probs, q0, cands, fast=False)
            sc.clear_caches()
            rows["cold"], cold, peaks["cold"] = timed_peak(sc.answer_probs, q0, cands)
            diffs = {"cold_vs_naive": max_diff(cold, naive)}
            if name.startswith("t2i"):
                sc.state_cache = None  # embeddings known, no KV states
                sc.clear_caches(embeddings=False)
                rows["prepared"], prepared, peaks["prepared"] = timed_peak(sc.answer_probs, q1, cands)
                sc.state_cache = states
                restored = sc.stats.states_restored
                rows["warm"], warm, peaks["warm"] = timed_peak(sc.answer_probs, q1, cands)
                diffs["warm_vs_prepared"] = max_diff(warm, prepared)
                restored = sc.stats.states_restored - restored
                state_bytes = [p.stat().st_size for p in (Path(tmp) / name).glob("*.kv")]
            else:
                sc.clear_caches(embeddings=False)  # the query image's embeddings stay
                rows["prepared"], prepared, peaks["prepared"] = timed_peak(sc.answer_probs, q0, cands)
                rows["warm"], warm, peaks["warm"] = timed_peak(sc.answer_probs, q0, cands)  # prefix held
                diffs["prepared_vs_naive"] = max_diff(prepared, naive)
                diffs["warm_vs_naive"] = max_diff(warm, naive)
                restored, state_bytes = 0, []
            segs = [sc.layout(q0, c) for c in cands]
            image_tokens = sum(s.n_tokens for s in segs[0] if s.kind == "image")
            total_tokens = [sum(s.n_tokens if s.kind == "image" else len(s.tokens) for s in p) for p in segs]
            result["cases"][name] = {
                "seconds_per_query": rows,
                "peak_rss_mb": peaks,
                "max_abs_p_true_diff": diffs,
                "states_restored": restored,
                "kv_state_bytes_per_image": max(state_bytes, default=0),
                "image_tokens_per_image": image_tokens,
                "prompt_tokens_per_pair": max(total_tokens),
                "p_true_naive": [a.p_true for a in naive],
            }
            layouts[name] = [[s.__dict__ for s in p] for p in segs]
            log(f"  {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in rows.items()))
        # vision encoder alone: one new image's projector embeddings
        [im] = photos(1, size, offset=500)
        sc.clear_caches()
        sc.state_cache = None
        seconds, _, result["vision_encoder_peak_rss_mb"] = timed_peak(sc.prepare, [im])
        result["vision_encoder_ms_per_image"] = 1000 * seconds
        result["n_image_tokens_budget"] = [sc.rt.min_image_tokens, sc.rt.max_image_tokens]
        result["answer_ids"] = [sc.true_id, sc.false_id]
    import llama_cpp

    result["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    result["peak_rss_mb"] = process_peak_rss_mb()
    result["model_bytes"] = Path(files.model).stat().st_size
    result["mmproj_bytes"] = Path(files.mmproj).stat().st_size
    layouts_out.write_text(json.dumps(layouts))
    return result


def run_reference(args: argparse.Namespace, hf: Path, layouts_in: Path, budget: list) -> dict:
    """The same prompts through transformers on the CPU, one forward per pair (the paper's path)."""
    import torch

    sys.path.insert(0, str(TESTS))
    from hf_vlm import HFReference
    from retllm_lite.rerank.llama_mtmd import Segment

    torch.set_num_threads(args.threads or physical_cores())
    layouts = json.loads(layouts_in.read_text())
    t = time.perf_counter()
    ref = HFReference(hf, KINDS[args.shape], dtype=args.reference, min_tokens=budget[0], max_tokens=budget[1])
    result: dict = {"dtype": args.reference, "load_seconds": time.perf_counter() - t, "cases": {}}
    true_id = budget[2]
    for name, queries, cands in cases(args.k, args.directions, tuple(args.image_size)):
        q0 = queries[0]
        seconds = 0.0
        p_true = []
        for c, segs in zip(cands, layouts[name], strict=True):
            segments = [Segment(s["kind"], tuple(s["tokens"]), s["image_key"], s["n_tokens"]) for s in segs]
            images = [im for im in (c.image, q0.image) if im is not None]  # the prompt's image order
            dt, probs = timed(ref.probs, segments, images)
            seconds += dt
            p_true.append(float(probs[true_id]))
        result["cases"][name] = {"seconds_per_query": seconds, "p_true": p_true}
        log(f"  {name}: transformers {seconds:.2f} s")
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch"] = torch.__version__
    return result


def child(part: str, args: argparse.Namespace, *paths: Path) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--shape", args.shape, "--type", args.type,
           "--mmproj-type", args.mmproj_type,
           "--k", *map(str, args.k), "--directions", *args.directions, "--reference", args.reference,
           "--image-size", *map(str, args.image_size), "--paths", *map(str, paths)]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2-vl-2b", choices=sorted(KINDS))
    ap.add_argument("--type", default="q4_k_m")
    ap.add_argument("--mmproj-type", default="q8_0", choices=["q8_0", "f16"],
                    help="projector type (q8_0: the registry's qwen2-vl-2b file)")  # fmt: skip
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--directions", nargs="+", default=["t2i", "i2t"], choices=["t2i", "i2t"])
    ap.add_argument("--reference", default="float32", choices=["float32", "bfloat16", "none"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--image-size", type=int, nargs=2, default=[448, 448])
    ap.add_argument("--part", choices=["llama", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.part == "llama":
        print(json.dumps(run_llama(args, Path(args.paths[0]), Path(args.paths[1]))))
        return
    if args.part == "reference":
        budget = json.loads(Path(args.paths[2]).read_text())
        print(json.dumps(run_reference(args, Path(args.paths[0]), Path(args.paths[1]), budget)))
        return

    hf, model = model_dirs(args.shape, args.type, args.mmproj_type)
    with tempfile.TemporaryDirectory() as tmp:
        layouts, budget = Path(tmp) / "layouts.json", Path(tmp) / "budget.json"
        log(f"llama.cpp ({args.type}), one scorer:")
        llama = child("llama", args, model, layouts)
        reference = None
        if args.reference != "none":
            budget.write_text(json.dumps([*llama["n_image_tokens_budget"], llama["answer_ids"][0]]))
            log(f"transformers ({args.reference}) on the same prompts:")
            reference = child("reference", args, hf, layouts, budget)
    table: dict = {}
    for name, case in llama["cases"].items():
        rows = dict(case["seconds_per_query"])
        if reference is not None:
            rows["transformers"] = reference["cases"][name]["seconds_per_query"]
        if reference is not None:
            # informational: Q4 weights and f16 KV against the checkout's own weights in torch
            want = reference["cases"][name]["p_true"]
            case["max_abs_p_true_diff"]["naive_vs_transformers"] = max(
                abs(a - b) for a, b in zip(case["p_true_naive"], want, strict=True)
            )
        table[name] = {
            "seconds_per_query": rows,
            "ratios_vs_naive": {k: rows["naive"] / v for k, v in rows.items()},
            "ratios_vs_transformers": (
                {k: rows["transformers"] / v for k, v in rows.items()} if reference is not None else None
            ),
        }
    prepared = llama["cases"].get(f"t2i-k{args.k[0]}")
    prefill = None
    if prepared is not None:
        # prepared t2i: per candidate, image embeddings + the query text decoded (header shared)
        tokens = prepared["prompt_tokens_per_pair"] * args.k[0]
        prefill = tokens / prepared["seconds_per_query"]["prepared"]
    result = {
        "benchmark": "rerank_real_shape",
        "shape": args.shape,
        "text_type": args.type,
        "mmproj_type": args.mmproj_type,
        "random_weights": True,
        "checkout_parameters": checkout_parameters(hf),
        "image_size": args.image_size,
        "table": table,
        "llama": llama,
        "reference": reference,
        "prefill_tokens_per_s": prefill,
        "cpu": cpu_info(),
    }
    print(json.dumps(result, indent=2))
    rss = llama["peak_rss_mb"]
    log(
        f"{args.shape} {args.type} + {args.mmproj_type} projector, {llama['threads']} threads, "
        f"peak RSS {rss:.0f} MiB (one scorer; {llama['rss_after_load_mb']:.0f} after loading)"
    )
    for name, row in table.items():
        c = llama["cases"][name]
        n_img, n_pair = c["image_tokens_per_image"], c["prompt_tokens_per_pair"]
        log(f"{name} ({n_img} image tokens an image, {n_pair} a pair):")
        for k, v in row["seconds_per_query"].items():
            vs_tf = f"   {row['ratios_vs_transformers'][k]:5.1f}x transformers" if reference else ""
            peak = c["peak_rss_mb"].get(k)
            rss_s = f"   peak {peak:5.0f} MiB" if peak else ""
            log(f"  {k:<13} {v:8.2f} s/query   {row['ratios_vs_naive'][k]:5.1f}x naive{vs_tf}{rss_s}")
    vision = llama["vision_encoder_ms_per_image"]
    log(f"vision encoder {vision:.0f} ms an image; prefill {prefill or 0:.0f} tokens/s")


if __name__ == "__main__":
    main()
