"""LanceDB search: exact (flat scan) against its IVF_HNSW_SQ vector index, by table size.

    python benchmarks/lance_search.py [--sizes 2000 5000 10000 20000 50000 100000] [--dim 512]

Prints one JSON object on stdout (progress on stderr). For each size, a LanceDB table of
clustered unit vectors (written the way ``LanceIndex`` writes them: blocks of 1,024 rows,
then ``optimize``) is searched the way ``LanceIndex.search`` does: exact first (the
baseline), then after building the IVF_HNSW_SQ index with the store's settings (nprobes,
ef, refine_factor). Reported: p50/p95 ms of a top-10 query, recall@10 of the index against
exact, and the index build time. The size where the index starts to pay is
``LANCE_INDEX_THRESHOLD`` (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from retllm_lite.cpu import cpu_info


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000, 20000, 50000, 100000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=60)
    args = ap.parse_args()

    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswSq

    from retllm_lite.index import lance_store as ls

    dim = args.dim
    centres = np.random.default_rng(1234).standard_normal((200, dim)).astype(np.float32)
    queries = clustered(args.queries, dim, 99, centres)
    schema = pa.schema([("id", pa.int64()), ("status", pa.string()), ("vector", pa.list_(pa.float32(), dim))])

    def timed(table, q, indexed: bool):
        b = table.search(q).distance_type("dot").where("status = 'ok'", prefilter=True).limit(10)
        if indexed:
            b = b.nprobes(ls.NPROBES).ef(ls.EF).refine_factor(ls.REFINE_FACTOR)
        t = time.perf_counter()
        ids = b.select(["id", "_distance"]).to_arrow()["id"].to_pylist()
        return time.perf_counter() - t, ids

    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="retllm-lance-bench-") as tmp:
            db = lancedb.connect(str(Path(tmp) / "db"))
            table = db.create_table("items", schema=schema)
            x = clustered(n, dim, n, centres)
            for s in range(0, n, 1024):
                xs = x[s : s + 1024]
                table.add(
                    pa.table(
                        {
                            "id": pa.array(np.arange(s, s + len(xs))),
                            "status": pa.array(["ok"] * len(xs)),
                            "vector": pa.FixedSizeListArray.from_arrays(pa.array(xs.ravel()), dim),
                        },
                        schema=schema,
                    )
                )
            table.optimize()
            exact_ids = [set(np.argsort(-(x @ q))[:10].tolist()) for q in queries]
            timed(table, queries[0], False)
            flat = [timed(table, q, False)[0] for q in queries]
            t = time.perf_counter()
            table.create_index("vector", config=HnswSq(distance_type="dot"))
            build = time.perf_counter() - t
            timed(table, queries[0], True)
            ann, hits = [], 0
            for q, truth in zip(queries, exact_ids, strict=True):
                dt, ids = timed(table, q, True)
                ann.append(dt)
                hits += len(truth & set(ids))
            row = {
                "vectors": n,
                "exact_ms_p50": round(1000 * float(np.percentile(flat, 50)), 2),
                "exact_ms_p95": round(1000 * float(np.percentile(flat, 95)), 2),
                "index_ms_p50": round(1000 * float(np.percentile(ann, 50)), 2),
                "index_ms_p95": round(1000 * float(np.percentile(ann, 95)), 2),
                "index_recall_at_10": round(hits / (10 * len(queries)), 4),
                "index_build_s": round(build, 1),
            }
            row["speedup_p50"] = round(row["exact_ms_p50"] / row["index_ms_p50"], 2)
            rows.append(row)
            log(json.dumps(row))
    print(
        json.dumps(
            {
                "benchmark": "lance_search",
                "dim": dim,
                "queries": len(queries),
                "settings": {"nprobes": ls.NPROBES, "ef": ls.EF, "refine_factor": ls.REFINE_FACTOR},
                "threshold_in_use": ls.LANCE_INDEX_THRESHOLD,
                "results": rows,
                "lancedb_version": lancedb.__version__,
                "python": platform.python_version(),
                "cpu": cpu_info(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
