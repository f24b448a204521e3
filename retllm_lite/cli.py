"""The ``retllm`` command: a thin layer over the library (parse, call, print).

Library errors (``RetllmError``) become one-line messages; set RETLLM_DEBUG=1 for a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .errors import RetllmError
from .output import emit_json, emit_paths, emit_table, output_options


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RetllmError as exc:
            if os.environ.get("RETLLM_DEBUG"):
                raise
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retllm")
def cli() -> None:
    """retllm: search your photos and captions offline (CLIP + a local VLM reranker)."""


main = cli

index_option = click.option(
    "--index",
    "index_path",
    type=click.Path(path_type=Path),
    envvar="RETLLM_INDEX",
    help="Index folder (default: $RETLLM_INDEX, else the XDG data dir).",
)
clip_option = click.option(
    "--clip-model",
    help="CLIP model: a folder from 'retllm quantize clip' or a model name.",
)
variant_option = click.option(
    "--variant",
    type=click.Choice(["int8", "fp32"]),
    help="Model variant (default: the index's, else int8).",
)


def _progress_enabled(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


class _Bars:
    """tqdm bars per stage, on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            desc, unit = {"embed": ("indexing", "img"), "ann": ("ANN index", "vec")}.get(stage, (stage, "it"))
            bar = self.bars[stage] = tqdm(
                total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True
            )
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------- index
@cli.command("index")
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@index_option
@clip_option
@variant_option
@click.option("--batch-size", default=32, show_default=True, help="Images per embedding batch.")
@click.option("--workers", type=int, help="Threads decoding images (default: min(4, CPUs)).")
@click.option("--hidden", is_flag=True, help="Also index hidden files and folders (.name).")
@click.option("--retry-errors", is_flag=True, help="Try files that failed before, even if unchanged.")
@click.option("--wait", type=float, default=0.0, help="Wait this many seconds for another indexer to finish.")
@click.option("--errors", "list_errors", is_flag=True, help="List what could not be indexed, and stop.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@output_options()
def index_cmd(
    folders,
    index_path,
    clip_model,
    variant,
    batch_size,
    workers,
    hidden,
    retry_errors,
    wait,
    list_errors,
    progress,
    output_format,
):
    """Add photo FOLDERS to the index, or bring them up to date.

    New and changed files are embedded, deleted ones dropped, moved ones recognised by
    content. Interrupt at any time: the next run resumes where this one stopped.
    """
    from .encode import load_encoder
    from .index.indexer import Indexer
    from .index.store import Index

    if list_errors:
        with Index.open(index_path) as idx:
            rows = [{"path": p, "reason": r} for p, r in idx.errors()]
        if output_format in ("json", "nl"):
            emit_json(rows, output_format)
        elif rows:
            emit_table(rows, [("reason", "reason", "{}"), ("path", "path", "{}")])
        else:
            click.echo("No errors.", err=True)
        return
    if not folders:
        raise click.UsageError("give at least one FOLDER to index (or --errors)")
    for folder in folders:
        if not folder.exists():
            raise click.BadParameter(f"{folder}: no such file or folder", param_hint="FOLDERS")
    with Index.open(index_path, writable=True, wait=wait) as idx:
        built = idx.encoder_info()
        if clip_model is None and built is not None:
            encoder = load_encoder(built.location, variant=variant or built.variant)
        else:
            encoder = load_encoder(clip_model, variant=variant or (built.variant if built else None))
        bars = _Bars(_progress_enabled(progress))
        indexer = Indexer(
            idx,
            encoder,
            batch_size=batch_size,
            workers=workers,
            hidden=hidden,
            retry_errors=retry_errors,
            progress=bars,
        )
        old = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            report = indexer.index_folders([str(f) for f in folders])
        finally:
            signal.signal(signal.SIGTERM, old)
            bars.close()
    if output_format in ("json", "nl"):
        emit_json({**report.to_dict(), "index": str(idx.directory)}, "json")
    else:
        _print_report(report, idx.directory)
    if report.interrupted:
        sys.exit(130)


def _print_report(report, directory: Path) -> None:
    parts = [f"{report.indexed} indexed"]
    for name in ("moved", "copied", "touched", "removed"):
        n = getattr(report, name)
        if n:
            parts.append(f"{n} {name}")
    parts.append(f"{report.unchanged} unchanged")
    line = ", ".join(parts)
    rate = f"{report.images_per_second:.1f} img/s" if report.indexed else ""
    click.echo(f"{line} ({report.seconds:.1f}s{', ' + rate if rate else ''}) in {directory}", err=True)
    problems = report.failed + report.skipped
    if problems:
        why = ", ".join(f"{n} {reason}" for reason, n in report.reasons.most_common())
        click.echo(f"{problems} not indexed: {why}. List them with: retllm index --errors", err=True)
    if report.interrupted:
        click.echo("Interrupted: finished work is saved. Run the same command again to resume.", err=True)


# --------------------------------------------------------------------------------- search
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
    "-k", "--top", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of results."
)
@click.option("--threshold", type=float, help="Drop results scoring below this cosine similarity.")
@click.option("--include", multiple=True, metavar="GLOB", help="Only paths matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths matching GLOB (repeatable).")
@index_option
@clip_option
@variant_option
@output_options(paths=True)
def search_cmd(
    text, image, image_weight, k, threshold, include, exclude, index_path, clip_model, variant, output_format
):
    """Find photos matching TEXT and/or an --image."""
    from .pipeline import Retriever

    if not text and image is None:
        raise click.UsageError("give a TEXT query, --image PATH, or both")
    with Retriever.open(index_path, clip_model=clip_model, variant=variant) as retriever:
        hits = retriever.search(
            text=text,
            image=image,
            k=k,
            image_weight=image_weight,
            threshold=threshold,
            include=include,
            exclude=exclude,
        )
    rows = [h.to_dict() for h in hits]
    if output_format in ("json", "nl"):
        emit_json(rows, output_format)
    elif output_format == "paths":
        emit_paths([h.path or h.text or "" for h in hits])
    elif rows:
        emit_table(rows, [("rank", "#", "{}"), ("score", "score", "{:.3f}"), ("path", "path", "{}")])
    else:
        click.echo("No results.", err=True)


# ------------------------------------------------------------------------------------ info
@cli.command("info")
@index_option
@output_options()
def info_cmd(index_path, output_format):
    """Show what an index holds and which model built it."""
    from .index.store import Index

    with Index.open(index_path) as idx:
        stats = idx.stats()
    if output_format in ("json", "nl"):
        emit_json(stats)
        return
    enc = stats["encoder"] or {}
    click.echo(f"index:    {stats['path']} ({stats['bytes_on_disk'] / 1e6:.1f} MB)")
    click.echo(f"encoder:  {enc.get('name', '-')} {enc.get('variant', '')} at {enc.get('location', '-')}")
    items = stats["items"]
    click.echo(f"vectors:  {items['vectors']}  errors: {items['errors']}  skipped paths: {items['skipped']}")
    click.echo(f"search:   {'hnsw (' + stats['ann'] + ')' if stats['ann'] else 'exact'}")


# -------------------------------------------------------------------------------- quantize
@cli.group("quantize", cls=_Group)
def quantize_group() -> None:
    """Export models for retllm (needs the 'export' extra: torch, open_clip, onnx)."""


@quantize_group.command("clip")
@click.argument("arch")
@click.option("--pretrained", help="open_clip pretrained tag (downloads) or a local checkpoint file.")
@click.option("--random-init", is_flag=True, help="Random weights: for tests and smoke runs.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--seed", default=0, show_default=True, help="Seed for --random-init.")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also write an int8 variant.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@output_options()
def quantize_clip_cmd(arch, pretrained, random_init, out_dir, seed, int8, force, output_format):
    """Export open_clip model ARCH to ONNX (fp32 + int8) with a verified manifest.

    ARCH is an open_clip architecture (ViT-B-32) or a model-config .json file.
    """
    from .quantize.clip import export_open_clip

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    manifest = export_open_clip(
        arch,
        out_dir,
        pretrained=pretrained,
        random_init=random_init,
        seed=seed,
        int8=int8,
        force=force,
        log=log,
    )
    if output_format in ("json", "nl"):
        emit_json(manifest)
    else:
        variants = ", ".join(manifest["variants"])
        click.echo(f"wrote {out_dir} ({variants}); use it with --clip-model {out_dir}")
