"""Indexing on Ray Data: images/s with 1 and with 2 local workers on the same files.

    python benchmarks/ray_index.py [--images 192] [--arch ViT-B-32] [--workers 1 2] [--batch 16]

Prints one JSON object on stdout (progress on stderr). For each worker count, a fresh LanceDB
index in a temporary folder is built by the real path (``LanceIndexer`` with ``RayOptions``:
a local Ray with that many CPUs, one actor per CPU, one onnxruntime thread per actor), and
for the baseline the same files go through the in-process LanceDB path (no Ray; decoding
threads + onnxruntime on all cores). Reported per run:

- ``wall_s`` / ``images_per_second``: end to end, Ray start-up and actor start-up included;
- ``steady_images_per_second``: from the first committed block to the last, i.e. what a
  long run approaches once the actors are up (start-up is a fixed cost of some seconds);
- the ratios of 2 workers to 1 worker (the target is >= 1.6x) and of each to the baseline.

Same generated 1080p JPEGs and the same random-weight model as ``index_speed.py`` (cached
under $RETLLM_BENCH_DIR). Random weights: only speed is meaningful.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from index_speed import export_model, log, make_images

from retllm_lite.cpu import cpu_info


def run(folder: Path, model: Path, batch: int, workers: int | None) -> dict:
    from retllm_lite.encode import load_encoder
    from retllm_lite.index.lance_indexer import LanceIndexer
    from retllm_lite.index.lance_store import LanceIndex
    from retllm_lite.index.ray_embed import RayOptions

    encoder = load_encoder(model)
    marks: list[tuple[float, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "embed":
            marks.append((time.perf_counter(), done))

    with tempfile.TemporaryDirectory(prefix="retllm-ray-bench-") as tmp:
        t0 = time.perf_counter()
        with LanceIndex.open(str(Path(tmp) / "idx"), writable=True) as idx:
            ray = RayOptions(workers=workers) if workers else None
            report = LanceIndexer(
                idx, encoder, batch_size=batch, progress=progress, ray=ray, commit_rows=batch
            ).index_folders([folder])
        wall = time.perf_counter() - t0
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    steady = (n_last - n_first) / (t_last - t_first) if t_last > t_first else None
    return {
        "workers": workers,
        "indexed": report.indexed,
        "wall_s": round(wall, 2),
        "images_per_second": round(report.indexed / wall, 2),
        "first_commit_s": round(t_first - t0, 2),
        "steady_images_per_second": round(steady, 2) if steady else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    folder = make_images(args.images)
    model = export_model(args.arch)
    log("baseline: in-process LanceDB path (no Ray)")
    baseline = run(folder, model, args.batch, None)
    log(json.dumps(baseline))
    runs = []
    for w in args.workers:
        log(f"Ray, {w} local worker(s)")
        runs.append(run(folder, model, args.batch, w))
        log(json.dumps(runs[-1]))
    by = {r["workers"]: r for r in runs}
    ratios = {}
    if 1 in by and 2 in by:
        steady = by[2]["steady_images_per_second"] / by[1]["steady_images_per_second"]
        ratios["2_vs_1_steady"] = round(steady, 2)
        ratios["2_vs_1_end_to_end"] = round(by[2]["images_per_second"] / by[1]["images_per_second"], 2)
    for r in runs:
        ratios[f"{r['workers']}_vs_local_steady"] = round(
            r["steady_images_per_second"] / baseline["steady_images_per_second"], 2
        )
    import ray

    result = {
        "benchmark": "ray_index",
        "images": args.images,
        "image_size": "1920x1080 JPEG",
        "arch": args.arch,
        "variant": "int8",
        "batch": args.batch,
        "local_no_ray": baseline,
        "ray": runs,
        "ratios": ratios,
        "ray_version": ray.__version__,
        "python": platform.python_version(),
        "cpu": cpu_info(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
