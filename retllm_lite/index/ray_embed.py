"""Embed image files on Ray Data: ``map_batches`` over an actor pool, one ONNX session per actor.

The driver lists the files (``scan.py``) and hands Ray a dataset of (path, size, mtime)
rows. Each actor loads the same encoder as a local run (``load_encoder``: onnxruntime, no
torch) and turns a batch of paths into rows with ``file_load.load_file`` + ``embed_loaded``,
the code the local indexers use, so the vectors are the same. Bad files come back as rows
with an error, never as a failed task. A task that does fail (an actor killed, a node lost,
an exception) is retried (``max_task_retries`` / ``max_restarts``, and
``actor_task_retry_on_errors``); the driver streams results back and commits them, so an
interrupted run resumes from what was committed.

Where it runs: with no address, a local Ray with ``workers`` CPUs and a small object store;
with ``address`` (or ``RAY_ADDRESS``), an existing cluster, whose nodes must see the photos
and the model folder at the same paths as the driver (docs/scale.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import require
from .file_load import EmbeddedFile, embed_loaded, load_file
from .scan import FileEntry

DEFAULT_OBJECT_STORE_MB = 512
TASK_RETRIES = 3


@dataclass(frozen=True)
class RayOptions:
    """How to run the embedding on Ray.

    ``address``: a cluster to join (``ray://host:10001`` or ``host:6379``); None: ``RAY_ADDRESS``
    if set, else a local Ray. ``workers``: actors (one ONNX session each; default: the CPUs of
    the local Ray, or of the cluster). ``threads``: onnxruntime threads per actor.
    """

    address: str | None = None
    workers: int | None = None
    threads: int = 1
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB


class EmbedFiles:
    """The Ray Data actor: one encoder (one onnxruntime session per tower) for its lifetime."""

    def __init__(self, location: str, variant: str, key: str, threads: int, known: frozenset[str]):
        from ..encode import load_encoder

        self.encoder = load_encoder(location, variant=variant, threads=threads)
        if self.encoder.info.key != key:
            raise RuntimeError(
                f"the model at {location} on this node is not the one the driver uses "
                f"({self.encoder.info.key} != {key})"
            )
        self.known = known

    def __call__(self, batch):
        entries = [
            FileEntry(p, s, m)
            for p, s, m in zip(
                batch["path"].to_pylist(),
                batch["size"].to_pylist(),
                batch["mtime_ns"].to_pylist(),
                strict=True,
            )
        ]
        done = embed_loaded(self.encoder, [load_file(self.encoder, e, self.known) for e in entries])
        return to_arrow(done, self.encoder.info.dim)


def to_arrow(files: Sequence[EmbeddedFile], dim: int):
    import pyarrow as pa

    n = len(files)
    flat = np.zeros((n, dim), np.float32)
    mask = np.ones(n, bool)
    for i, f in enumerate(files):
        if f.vector is not None:
            flat[i] = f.vector
            mask[i] = False
    return pa.table(
        {
            "path": pa.array([f.entry.path for f in files], pa.binary()),
            "size": pa.array([f.entry.size for f in files], pa.int64()),
            "mtime_ns": pa.array([f.entry.mtime_ns for f in files], pa.int64()),
            "fingerprint": pa.array([f.fingerprint for f in files], pa.string()),
            "width": pa.array([f.width for f in files], pa.int32()),
            "height": pa.array([f.height for f in files], pa.int32()),
            "error": pa.array([f.error for f in files], pa.string()),
            "warning": pa.array([f.warning for f in files], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dim, mask=pa.array(mask)),
        }
    )


def from_arrow(table) -> list[EmbeddedFile]:
    vec = table["vector"].combine_chunks()
    dim = vec.type.list_size
    # .values keeps the slots of null vectors (flatten() would drop them and shift the rest)
    values = vec.values.to_numpy(zero_copy_only=False)
    flat = values[vec.offset * dim : (vec.offset + len(vec)) * dim].reshape(-1, dim)
    valid = vec.is_valid().to_pylist()
    cols = {c: table[c].to_pylist() for c in table.column_names if c != "vector"}
    out = []
    for i in range(table.num_rows):
        out.append(
            EmbeddedFile(
                FileEntry(cols["path"][i], cols["size"][i], cols["mtime_ns"][i]),
                cols["fingerprint"][i],
                flat[i].copy() if valid[i] else None,
                cols["width"][i],
                cols["height"][i],
                cols["error"][i],
                cols["warning"][i],
            )
        )
    return out


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[int]:
    """Ray for this run: the one already initialised, a cluster, or a local one (shut down after).

    Yields how many actors to start.
    """
    ray = require("ray", "scale", "indexing on Ray (--ray)")
    # Ray prints its notes (a worker died, a task is retried) to stdout: keep stdout for results
    with contextlib.redirect_stdout(sys.stderr):
        yield from _ray_session(ray, options)


def _ray_session(ray, options: RayOptions) -> Iterator[int]:
    started = False
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        common = {"include_dashboard": False, "logging_level": "error", "log_to_driver": False}
        # the driver has lancedb loaded: Ray's fork+exec of its processes is safe, say nothing
        warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(
                num_cpus=options.workers or os.cpu_count() or 1,
                object_store_memory=options.object_store_mb * 2**20,
                **common,
            )
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        yield max(1, options.workers or cpus // max(1, options.threads))
    finally:
        if started:
            ray.shutdown()


def embed_on_ray(
    entries: Sequence[FileEntry],
    location: str,
    variant: str,
    key: str,
    known: frozenset[str],
    options: RayOptions,
    batch_size: int = 32,
) -> Iterator[list[EmbeddedFile]]:
    """Embed ``entries`` on Ray; yields results a block at a time, in no particular order."""
    if not entries:
        return
    import pyarrow as pa

    ray = require("ray", "scale", "indexing on Ray (--ray)")
    with ray_session(options) as workers:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI draws its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ctx.actor_task_retry_on_errors = True
        # blocks of about one batch keep all actors busy and results streaming to the driver
        per_block = max(batch_size, -(-len(entries) // 4096))
        blocks = [
            pa.table(
                {
                    "path": pa.array([e.path for e in entries[i : i + per_block]], pa.binary()),
                    "size": pa.array([e.size for e in entries[i : i + per_block]], pa.int64()),
                    "mtime_ns": pa.array([e.mtime_ns for e in entries[i : i + per_block]], pa.int64()),
                }
            )
            for i in range(0, len(entries), per_block)
        ]
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for actor task retries yet; ray_remote_args is
            # deprecated (for 2.64) but still the way (the scale extra pins ray below 2.64)
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ray.data.from_arrow(blocks).map_batches(
                EmbedFiles,
                fn_constructor_kwargs={
                    "location": location,
                    "variant": variant,
                    "key": key,
                    "threads": options.threads,
                    "known": known,
                },
                batch_size=batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(blocks))),
                num_cpus=options.threads,
                max_restarts=TASK_RETRIES,
                max_task_retries=TASK_RETRIES,
            )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            yield from_arrow(batch)
