"""``retllm search``: text, image or composed queries over an index."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from ..errors import BadInput
from . import app
from .app import announce, cli, clip_option, index_option, offline_option, progress_enabled, variant_option
from .output import emit_json, emit_paths, emit_table, output_options
from .rerank_options import rerank_options
from .view import view_options


class DateBound(click.ParamType):
    """YYYY, YYYY-MM or YYYY-MM-DD, checked when parsed (a bad one is a one-line usage error)."""

    name = "DATE"

    def convert(self, value, param, ctx):
        from ..errors import BadInput
        from ..index.dates import DATE_FORMS, parse_date_bound

        try:
            parse_date_bound(value, param.opts[0] if param else "date")
        except BadInput:
            self.fail(f"{value!r} is not a date: {DATE_FORMS}", param, ctx)
        return value


@cli.command("search")
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path), help="Query image (with TEXT: a composed query).")
@click.option(
    "--image-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the image in a text+image query.",
)
@click.option(
    "-k",
    "--k",
    "--top",
    "k",
    type=click.IntRange(min=1),
    help="Number of results (default 10; with --rerank, the --rerank-k depth). Beyond the "
    "reranked ones, coarse results follow in CLIP order.",
)
@click.option("--threshold", type=float, help="Drop results scoring below this cosine similarity.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB (repeatable).")
@click.option(
    "--after",
    type=DateBound(),
    help="Only photos taken in or after this YYYY, YYYY-MM or YYYY-MM-DD "
    "(EXIF capture time, else file mtime).",
)
@click.option(
    "--before",
    type=DateBound(),
    help="Only photos taken before this YYYY, YYYY-MM or YYYY-MM-DD "
    "(--after 2023-06 --before 2023-09: June-August).",
)
@click.option(
    "--modality",
    type=click.Choice(["image", "text", "image+text"]),
    help="Only results of this kind (e.g. text: image-to-caption retrieval).",
)
@index_option
@clip_option
@variant_option
@offline_option
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Say what a rerank is doing when it takes more than a second (default: on a terminal).",
)
@rerank_options
@output_options(paths=True)
@view_options
def search_cmd(
    text,
    image,
    image_weight,
    k,
    threshold,
    include,
    exclude,
    after,
    before,
    modality,
    index_path,
    clip_model,
    variant,
    offline,
    progress,
    output_format,
    view,
    rerank,
):
    """Find photos (or captions, or image+text items) matching TEXT and/or an --image."""
    from ..index.backend import is_lance
    from ..index.dates import date_filter
    from ..pipeline import Retriever

    if not text and image is None:
        raise click.UsageError("give a TEXT query, --image PATH, or both")
    if (after or before) and is_lance(index_path):
        raise click.UsageError(
            "--after/--before need a local index: LanceDB indexes do not record capture dates yet"
        )
    try:
        where = date_filter(after, before)
    except BadInput as exc:
        raise click.UsageError(str(exc)) from None
    if clip_model is not None:
        from ..models.pull import ensure_clip

        clip_model = ensure_clip(clip_model, offline=offline, announce=announce)
    scorer = None
    # the index (and its CLIP model) first: a missing index must not cost loading a VLM
    with Retriever.open(index_path, clip_model=clip_model, variant=variant) as retriever:
        if retriever.index.pixels_outdated():
            click.echo(
                "note: this index predates compositing transparent images onto white; "
                "run 'retllm index FOLDER' again to re-embed them",
                err=True,
            )
        notice = contextlib.nullcontext()
        if rerank is not None:
            depth = rerank.options.k
            notice = app.slow_notice(
                f"reranking the top {depth} with the VLM (images are encoded once and cached)...",
                progress_enabled(progress),
            )
        try:
            with notice:
                if rerank is not None:
                    retriever.scorer = scorer = rerank.scorer(offline, announce)
                hits = retriever.search(
                    text=text,
                    image=image,
                    k=k or (rerank.options.k if rerank is not None else 10),
                    image_weight=image_weight,
                    threshold=threshold,
                    include=include,
                    exclude=exclude,
                    modality=modality,
                    where=where,
                    rerank=rerank.options if rerank is not None else None,
                )
        finally:
            if scorer is not None:
                scorer.close()
    if view.show(hits, output_format, text=text, image=image, image_weight=image_weight):
        return
    rows = [h.to_dict() for h in hits]
    if output_format in ("json", "nl"):
        emit_json(rows, output_format)
    elif output_format == "paths":
        emit_paths([_path_or_id(h) for h in hits])
    elif rows:
        emit_table(table_rows(hits), table_columns(hits, explain=rerank is not None and rerank.explain))
    else:
        click.echo("No results.", err=True)


def _path_or_id(hit) -> str:
    """What --paths prints: the file, or a caption's id (a caption is not a path)."""
    if hit.path:
        return hit.path
    return str(hit.item_id if hit.item_id is not None else hit.id)


def _describe(hit) -> str:
    """The table's last column: the path, the caption, or both for an image+text item."""
    if hit.modality == "text":
        return f"[{hit.item_id}] {hit.text}" if hit.item_id else hit.text or ""
    if hit.modality == "image+text":
        return f"[{hit.item_id}] {hit.path}  {hit.text}"
    return hit.path or ""


def table_rows(hits) -> list[dict]:
    return [{**h.to_dict(), "item": _describe(h)} for h in hits]


def table_columns(hits, explain: bool = False) -> list[tuple[str, str, str]]:
    columns = [("rank", "#", "{}"), ("score", "score", "{:.3f}")]
    if explain:
        columns += [
            ("coarse_rank", "coarse#", "{}"),
            ("clip_score", "clip", "{:.3f}"),
            ("p_true", "P(True)", "{:.4f}"),
            ("entropy", "entropy", "{:.3f}"),
            ("enhanced", "enh", "{}"),
        ]
    if len({h.modality for h in hits}) > 1:
        columns.append(("modality", "kind", "{}"))
    return [*columns, ("item", "path" if all(h.modality == "image" for h in hits) else "item", "{}")]
