"""``retllm prepare-rerank``: do ahead of queries what reranking needs of each indexed photo."""

from __future__ import annotations

import click

from .app import (
    announce,
    cli,
    index_option,
    mmproj_option,
    offline_option,
    progress_enabled,
    vlm_model_option,
)
from .output import emit_json, output_options
from .runtime_options import vlm_runtime_options


@cli.command("prepare-rerank")
@index_option
@vlm_model_option
@mmproj_option
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N photos (by index order).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@offline_option
@vlm_runtime_options
@output_options()
def prepare_rerank_cmd(index_path, vlm_model, mmproj, limit, progress, offline, vlm_runtime, output_format):
    """Encode every indexed photo with the VLM's projector and keep the KV state of its prompt head.

    A later `retllm search TEXT --rerank` then runs no vision encoder for these photos and
    decodes only its own text for them. Resumable: run it again after an interrupt; what is
    cached already is restored, not recomputed. Needs the KV-state cache (--kv-cache-mb > 0).
    """
    from pathlib import Path

    from ..index.backend import is_lance, open_index
    from ..models.pull import ensure_vlm
    from ..rerank.llama_mtmd import LlamaMtmdScorer

    with open_index(index_path) as idx:
        if is_lance(index_path):  # a LanceDB index holds photos only
            raw = idx.scan_columns(["path"], "status = 'ok'")["path"].to_pylist()
        else:
            raw = [
                r.path
                for r in idx.catalog.all_items(status="ok")
                if r.modality in ("image", "image+text") and r.path
            ]
        where = idx.location
    paths = [p for p in (Path(r.decode(errors="surrogateescape")) for r in raw) if p.is_file()]
    if limit:
        paths = paths[:limit]
    model, proj = ensure_vlm(vlm_model, mmproj, offline=offline, announce=announce)
    kwargs = vlm_runtime.scorer_kwargs()
    if not kwargs.get("state_cache_mb"):
        raise click.UsageError("prepare-rerank keeps KV states: give --kv-cache-mb above 0")
    with LlamaMtmdScorer(model, proj, embedding_cache=True, **kwargs) as scorer:
        if progress_enabled(progress):
            with click.progressbar(
                length=len(paths), label="preparing", file=click.get_text_stream("stderr")
            ) as bar:
                scorer.prepare(paths, progress=bar.update)
        else:
            scorer.prepare(paths)
        stats = scorer.stats
    report = {
        "index": str(where),
        "photos": len(paths),
        "images_encoded": stats.images_encoded,
        "embeddings_from_disk": stats.embedding_disk_hits,
        "states_saved": stats.states_saved,
        "states_restored": stats.states_restored,
    }
    if output_format in ("json", "nl"):
        emit_json(report)
    else:
        announce(
            f"prepared {len(paths)} photos of {where}: {stats.images_encoded} encoded, "
            f"{stats.states_saved} KV states saved, {stats.states_restored} already there"
        )
