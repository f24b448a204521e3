"""The local index (SQLite catalog + hnswlib snapshot) at 100k and 1M vectors.

    python benchmarks/index_scale.py [--sizes 100000 1000000] [--recall-queries 10000]
                                     [--arch ViT-B-32] [--clip-model DIR] [--add 1000]

A synthetic catalog of N clustered 512-d unit vectors (N/200 cluster centres, noise 0.35:
uniform noise is HNSW's worst case and unlike real embeddings) is written through the
real code: ``Index.open`` / ``Catalog.upsert_item`` in one transaction per 20k items, then
``Index.update_ann`` (a full snapshot build, i.e. what a rebuild costs). It is cached
under $RETLLM_BENCH_DIR (default ~/.cache/retllm-lite/bench) with its build times, so
reruns skip building. For each N, one JSON object on stdout (a table on stderr):

- open: seconds to open the index for a search and RSS after opening, in a fresh
  subprocess (the snapshot file is in the page cache: a warm open);
- text_query_ms: p50/p95 of encode + search (``Index.search``, k=10) with the real-shape
  text tower (random ViT-B-32 weights, int8), and RSS after the queries (search RSS);
- recall_at_10 of the index's search against exact search (numpy, chunked over the
  catalog) on clustered queries;
- add / delete: 1,000 new photos (640x480 JPEGs) indexed into the N index by
  ``Indexer.index_folders`` (scan, decode, embed, commit, snapshot growth), then the same
  files removed and indexed again (tombstones, snapshot update), against the baseline of
  embedding the same 1,000 files (``embed_images``, batches of 32) in the same run;
- bytes per item on disk (catalog, snapshot).

The add and delete steps run on the cached index and leave its live set as it was (the
snapshot keeps the 1,000 deleted elements marked; ``churn_rounds`` counts such rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from retllm_lite.cpu import cpu_info

sys.path.insert(0, str(Path(__file__).parent))
from index_speed import BENCH_DIR, export_model, log

DIM = 512
CHUNK = 20_000
LAYOUT = "v1"  # bump when the synthetic data or the catalog layout changes


def clustered_chunk(n_total: int, start: int, size: int, seed: int = 0) -> np.ndarray:
    """Rows start..start+size of the N-vector synthetic set (deterministic per chunk)."""
    centres = np.random.default_rng(99).standard_normal((max(n_total // 200, 10), DIM))
    rng = np.random.default_rng([seed, start])
    x = centres[rng.integers(0, len(centres), size)] + 0.35 * rng.standard_normal((size, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rss_mib() -> dict:
    with open("/proc/self/status") as fh:
        status = dict(line.split(":", 1) for line in fh)
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}


def dir_bytes(path: Path) -> dict:
    sizes = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
    catalog = sum(v for k, v in sizes.items() if k.startswith("catalog.sqlite3"))
    ann = sum(v for k, v in sizes.items() if k.startswith("ann-"))
    return {"catalog": catalog, "ann": ann, "total": sum(sizes.values())}


# ---- building (cached) -------------------------------------------------------------
def build(n: int, info) -> tuple[Path, dict]:
    from retllm_lite.index.store import Index

    folder = BENCH_DIR / f"index-scale-{LAYOUT}-{n}"
    record = folder / "bench-build.json"
    if record.is_file():
        return folder, json.loads(record.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    log(f"building the {n:,}-vector catalog in {folder} (cached for reruns)")
    t0 = time.perf_counter()
    with Index.open(folder, writable=True) as idx:
        idx.set_encoder(info)
        cat = idx.catalog
        start = cat.searchable_count()  # resume an interrupted build
        start -= start % CHUNK
        resumed_from = start
        while start < n:
            size = min(CHUNK, n - start)
            data = clustered_chunk(n, start, size)
            with cat.transaction() as seq:
                for i in range(size):
                    j = start + i
                    cat.upsert_item(
                        seq,
                        data[i],
                        key=f"item:bench#{j}".encode(),
                        modality="text",
                        source="bench",
                        item_id=str(j),
                        status="ok",
                    )
            start += size
            log(f"  catalog {start:,}/{n:,} ({time.perf_counter() - t0:.0f} s)")
        write_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        last = [0.0]

        def progress(done, total):
            if time.perf_counter() - last[0] > 30:
                last[0] = time.perf_counter()
                log(f"  snapshot {done:,}/{total:,} ({time.perf_counter() - t1:.0f} s)")

        action = idx.update_ann(progress=progress)
        build_s = time.perf_counter() - t1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "catalog_write_seconds": round(write_s, 1),
        "catalog_resumed_from": resumed_from,  # > 0: the write time covers only the rest
        "snapshot_build_seconds": round(build_s, 1),
        "snapshot_action": action,
        "build_peak_rss_mib": round(peak, 1),
        "churn_rounds": 0,
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    record.write_text(json.dumps(out, indent=2))
    log(f"  built: catalog {write_s:.0f} s, snapshot {build_s:.0f} s ({action}), peak RSS {peak:.0f} MiB")
    return folder, out


# ---- search side, in a fresh process -------------------------------------------------
def child_search(folder: Path, model: Path, n: int, latency_queries: int, recall_queries: int) -> dict:
    from retllm_lite.index.store import Index

    before = rss_mib()
    t0 = time.perf_counter()
    idx = Index.open(folder)
    kind = idx.search_kind  # loads the snapshot and applies the catalog's changes since
    open_s = time.perf_counter() - t0
    after_open = rss_mib()

    from retllm_lite.encode import load_encoder

    enc = load_encoder(model)
    texts = [f"a photo of object number {i} on a table" for i in range(latency_queries)]
    idx.search(enc.embed_texts(texts[:1])[0], 10)  # warm-up
    total_ms, encode_ms = [], []
    for text in texts:
        t0 = time.perf_counter()
        q = enc.embed_texts([text])[0]
        t1 = time.perf_counter()
        idx.search(q, 10)
        total_ms.append((time.perf_counter() - t0) * 1000)
        encode_ms.append((t1 - t0) * 1000)
    search_ms = [t - e for t, e in zip(total_ms, encode_ms, strict=True)]
    after_queries = rss_mib()

    # recall@10 of Index.search against exact search over the catalog, in chunks
    queries = clustered_chunk(n, 10**9, recall_queries, seed=1)
    t0 = time.perf_counter()
    got = [np.asarray([row.id for row, _ in idx.search(q, 10)]) for q in queries]
    ann_ms = (time.perf_counter() - t0) * 1000 / len(queries)
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_l = np.zeros((len(queries), 10), np.int64)
    t0 = time.perf_counter()
    for labels, vecs in idx.catalog.iter_vectors(DIM, chunk=32768):
        for b in range(0, len(queries), 2000):
            s = queries[b : b + 2000] @ vecs.T  # [2000, 32768]: 256 MB
            top = np.argpartition(-s, 9, axis=1)[:, :10]  # this chunk's 10 best, then merge
            cand_s = np.concatenate([best_s[b : b + 2000], np.take_along_axis(s, top, 1)], axis=1)
            cand_l = np.concatenate([best_l[b : b + 2000], labels[top]], axis=1)
            keep = np.argpartition(-cand_s, 9, axis=1)[:, :10]
            best_s[b : b + 2000] = np.take_along_axis(cand_s, keep, 1)
            best_l[b : b + 2000] = np.take_along_axis(cand_l, keep, 1)
    exact_s = time.perf_counter() - t0
    hits = sum(len(np.intersect1d(g, e)) for g, e in zip(got, best_l, strict=True))
    meta = idx.catalog.meta()
    idx.close()

    def pct(xs, p):
        return round(float(np.percentile(xs, p)), 2)

    return {
        "search": kind,
        "open_seconds": round(open_s, 3),
        "rss_mib": {
            "before_open": before["VmRSS"],
            "after_open": after_open["VmRSS"],
            "after_queries": after_queries["VmRSS"],
            "peak": after_queries["VmHWM"],
        },
        "text_query_ms": {"p50": pct(total_ms, 50), "p95": pct(total_ms, 95), "queries": len(texts)},
        "of_which_encode_ms": {"p50": pct(encode_ms, 50), "p95": pct(encode_ms, 95)},
        "of_which_search_ms": {"p50": pct(search_ms, 50), "p95": pct(search_ms, 95)},
        "load_average": os.getloadavg(),
        "recall_at_10": round(hits / (10 * len(queries)), 4),
        "recall_queries": len(queries),
        "search_only_ms_mean": round(ann_ms, 3),
        "exact_seconds_all_queries": round(exact_s, 1),
        "snapshot": {k: meta.get(k) for k in ("ann_file", "ann_build_seq", "ann_updates", "ann_elements")},
    }


def measure_search(folder: Path, model: Path, n: int, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child-search",
        str(folder),
        "--clip-model",
        str(model),
        "--sizes",
        str(n),
        "--latency-queries",
        str(args.latency_queries),
        "--recall-queries",
        str(args.recall_queries),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"search subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


# ---- adding and deleting real photos ----------------------------------------------------
def make_photos(n: int) -> Path:
    from PIL import Image, ImageDraw, ImageFilter

    folder = BENCH_DIR / f"jpeg-640-{n}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    log(f"generating {n} 640x480 JPEGs in {folder}")
    rng = np.random.default_rng(5)
    x = np.linspace(0, 1, 640)[None, :, None]
    y = np.linspace(0, 1, 480)[:, None, None]
    for i in range(n):
        base = rng.integers(0, 256, 3)
        arr = base + x * rng.integers(-100, 100, 3) + y * rng.integers(-100, 100, 3)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 600)), int(rng.integers(0, 440))
            box = (x0, y0, x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 160)))
            d.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img = img.filter(ImageFilter.GaussianBlur(1))
        noisy = np.asarray(img, np.float32) + rng.normal(0, 6, (480, 640, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def child_churn(folder: Path, model: Path, photos: Path) -> dict:
    from retllm_lite.encode import load_encoder
    from retllm_lite.index.indexer import Indexer
    from retllm_lite.index.store import Index

    enc = load_encoder(model)
    files = sorted(photos.glob("*.jpg"))
    enc.embed_images(files[:4])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(files), 32):
        enc.embed_images(files[i : i + 32])
    embed_s = time.perf_counter() - t0

    work = folder.parent / f"{folder.name}-photos"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for f in files:
        os.link(f, work / f.name)
    out = {"photos": len(files), "embed_seconds": round(embed_s, 2)}
    try:
        with Index.open(folder, writable=True) as idx:
            t0 = time.perf_counter()
            report = Indexer(idx, enc).index_folders([work])
            add_s = time.perf_counter() - t0
            meta = idx.catalog.meta()
        out["add"] = {
            "seconds": round(add_s, 2),
            "indexed": report.indexed,
            "ann": report.ann,
            "embed_seconds_in_run": round(report.embed_seconds, 2),
            "ratio_to_embedding": round(add_s / embed_s, 3),
            "snapshot_elements": int(meta["ann_elements"]),
            "updates": int(meta["ann_updates"]),
        }
        for f in work.iterdir():
            f.unlink()
        with Index.open(folder, writable=True) as idx:
            t0 = time.perf_counter()
            report = Indexer(idx, enc).index_folders([work])
            del_s = time.perf_counter() - t0
        out["delete"] = {"seconds": round(del_s, 2), "removed": report.removed, "ann": report.ann}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["peak_rss_mib"] = rss_mib()["VmHWM"]
    return out


def measure_churn(folder: Path, model: Path, photos: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child-churn",
        str(folder),
        "--clip-model",
        str(model),
        "--photos",
        str(photos),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"add/delete subprocess failed:\n{proc.stderr[-3000:]}")
    record = folder / "bench-build.json"
    built = json.loads(record.read_text())
    built["churn_rounds"] = built.get("churn_rounds", 0) + 1
    record.write_text(json.dumps(built, indent=2))
    return json.loads(proc.stdout)


def precision_study(folder: Path, n: int, n_queries: int = 1000) -> dict:
    """recall@10 of exact search over float16 / int8 copies of the catalog's vectors, against float32.

    What storing the catalog's vectors at lower precision would cost in ranking; the bytes
    are the vector blob's (SQLite adds its page layout on top, see bytes_per_item).
    """
    from retllm_lite.index.store import Index

    queries = clustered_chunk(n, 10**9, n_queries, seed=1)
    with Index.open(folder) as idx:
        labels, vecs = idx.catalog.load_vectors(DIM)
    truth = np.argpartition(-(queries @ vecs.T), 9, axis=1)[:, :10]
    f16 = vecs.astype(np.float16).astype(np.float32)
    scale = np.abs(vecs).max(axis=1, keepdims=True) / 127.0
    i8 = np.round(vecs / scale).astype(np.int8).astype(np.float32) * scale
    out = {"vectors": len(labels), "queries": n_queries}
    for name, approx, nbytes in (("float16", f16, 2 * DIM), ("int8", i8, DIM + 4)):
        got = np.argpartition(-(queries @ approx.T), 9, axis=1)[:, :10]
        hits = sum(len(np.intersect1d(g, t)) for g, t in zip(got, truth, strict=True))
        cos = np.sum(approx * vecs, axis=1) / np.linalg.norm(approx, axis=1)
        out[name] = {
            "recall_at_10": round(hits / (10 * n_queries), 4),
            "vector_bytes": nbytes,
            "min_cosine_to_float32": round(float(cos.min()), 6),
        }
    out["float32"] = {"recall_at_10": 1.0, "vector_bytes": 4 * DIM}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--clip-model", type=Path, help="use this exported model instead of a random one")
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--recall-queries", type=int, default=10_000)
    ap.add_argument("--add", type=int, default=1000, help="photos added and deleted (0: skip)")
    ap.add_argument("--precision-study", action="store_true", help="float16/int8 recall on the cached sizes")
    ap.add_argument("--child-search", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-churn", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    model = args.clip_model or export_model(args.arch)
    if args.child_search:
        r = child_search(args.child_search, model, args.sizes[0], args.latency_queries, args.recall_queries)
        print(json.dumps(r))
        return
    if args.precision_study:
        for n in args.sizes:
            folder = BENCH_DIR / f"index-scale-{LAYOUT}-{n}"
            print(json.dumps({str(n): precision_study(folder, n)}))
        return
    if args.child_churn:
        print(json.dumps(child_churn(args.child_churn, model, args.photos)))
        return

    from retllm_lite.encode import load_encoder

    info = load_encoder(model).info
    result = {
        "benchmark": "index_scale",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "cpu": cpu_info(),
        "model": str(model),
        "data": "synthetic clustered unit vectors, 512-d, N/200 centres, noise 0.35",
        "sizes": {},
    }
    photos = make_photos(args.add) if args.add else None
    for n in args.sizes:
        folder, built = build(n, info)
        r = {"build": built, "disk": dir_bytes(folder)}
        r["bytes_per_item"] = round(r["disk"]["total"] / n, 1)
        log(f"{n:,}: measuring open, queries and recall")
        r["search"] = measure_search(folder, model, n, args)
        if photos is not None:
            log(f"{n:,}: adding and deleting {args.add} photos")
            r["churn"] = measure_churn(folder, model, photos)
        result["sizes"][str(n)] = r
        log(json.dumps(r))
    print(json.dumps(result, indent=2))
    log(table(result))


def table(result: dict) -> str:
    lines = [
        "| vectors | open | RSS after open / after queries | text query p50 / p95 | recall@10 | "
        "add 1,000 (ratio to embedding) | delete 1,000 | snapshot build | bytes/item |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in result["sizes"].items():
        s = r["search"]
        c = r.get("churn")
        add = f"{c['add']['seconds']} s ({c['add']['ratio_to_embedding']}x)" if c else "-"
        dele = f"{c['delete']['seconds']} s" if c else "-"
        lines.append(
            f"| {int(n):,} | {s['open_seconds']} s | {s['rss_mib']['after_open']:.0f} / "
            f"{s['rss_mib']['after_queries']:.0f} MiB | {s['text_query_ms']['p50']} / "
            f"{s['text_query_ms']['p95']} ms | {s['recall_at_10']} | {add} | {dele} | "
            f"{r['build']['snapshot_build_seconds']} s | {r['bytes_per_item']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
