"""``retllm index``: add folders to an index or bring them up to date."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from .app import (
    Bars,
    announce,
    cli,
    clip_option,
    index_option,
    offline_option,
    progress_enabled,
    raise_keyboard_interrupt,
    variant_option,
)
from .output import emit_json, emit_table, output_options


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
@click.option(
    "--errors",
    "list_errors",
    is_flag=True,
    help="List what could not be indexed (and decoder warnings about what was), and stop.",
)
@click.option(
    "--texts",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="A caption collection: .txt (one a line) or .jsonl {id, text} (repeatable).",
)
@click.option(
    "--items",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="An item collection: .jsonl {id, image, text} (repeatable).",
)
@click.option(
    "--item-image-weight",
    type=click.FloatRange(0, 1),
    help="Image weight w of image+text items: normalize(w*image + (1-w)*text). Default 0.5.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Embed on Ray Data into a LanceDB --index lance:URI: join the cluster at ADDRESS (or "
    "$RAY_ADDRESS), else start a local Ray. Put it after the FOLDERS.",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(min=1),
    help="Ray actors, one ONNX session each (default: the CPUs of the local Ray or cluster; "
    "a local Ray gets this many CPUs).",
)
@click.option(
    "--commit-rows",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="LanceDB index: rows per commit (what an interrupted run keeps).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep going: index files as they appear, change, move or disappear (Ctrl-C stops, "
    "everything committed).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
@offline_option
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
    texts,
    items,
    item_image_weight,
    ray_address,
    ray_workers,
    commit_rows,
    watch,
    progress,
    offline,
    output_format,
):
    """Add photo FOLDERS (and --texts/--items collections) to the index, or bring them up to date.

    New and changed files are embedded, deleted ones dropped, moved ones recognised by
    content. Interrupt at any time: the next run resumes where this one stopped.
    """
    from ..index.backend import is_lance, make_indexer, open_index
    from ..index.report import IndexReport

    if list_errors:
        with open_index(index_path) as idx:
            rows = [{"path": p, "reason": r} for p, r in idx.errors()]
            rows += [{"path": p, "reason": f"indexed, with a warning: {w}"} for p, w in idx.warnings()]
        if output_format in ("json", "nl"):
            emit_json(rows, output_format)
        elif rows:
            emit_table(rows, [("reason", "reason", "{}"), ("path", "path", "{}")])
        else:
            click.echo("No errors.", err=True)
        return
    if not folders and not texts and not items:
        raise click.UsageError("give a FOLDER, --texts FILE or --items FILE to index (or --errors)")
    if watch and (not folders or texts or items or is_lance(index_path) or ray_address is not None):
        raise click.UsageError(
            "--watch follows photo FOLDERS into a local index (not --texts/--items, lance: or --ray)"
        )
    ray = None
    if ray_address is not None or ray_workers is not None:
        if not is_lance(index_path):
            raise click.UsageError("--ray embeds into a LanceDB index: add --index lance:FOLDER_OR_URI")
        from ..index.ray_embed import RayOptions

        ray = RayOptions(address=ray_address or None, workers=ray_workers)
    for path in (*folders, *texts, *items):
        if not path.exists():
            raise click.BadParameter(f"{path}: no such file or folder", param_hint="FOLDERS")
    # The model first: if it cannot be had, no index folder is left behind.
    encoder = encoder_for_index(index_path, clip_model, variant, offline, progress)
    if watch:
        _watch(
            folders,
            index_path,
            encoder,
            wait,
            output_format,
            progress_enabled(progress),
            **{"batch_size": batch_size, "workers": workers, "hidden": hidden, "retry_errors": retry_errors},
        )
        return
    lance_only = {"commit_rows": commit_rows, "ray": ray} if is_lance(index_path) else {}
    with open_index(index_path, writable=True, wait=wait) as idx:
        bars = Bars(progress_enabled(progress))
        indexer = make_indexer(
            idx,
            encoder,
            **lance_only,
            batch_size=batch_size,
            workers=workers,
            hidden=hidden,
            retry_errors=retry_errors,
            progress=bars,
            item_image_weight=item_image_weight,
        )
        old = signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        try:
            report = indexer.index_folders([str(f) for f in folders]) if folders else IndexReport()
            for kind, files in (("texts", texts), ("items", items)):
                for f in files:
                    if not report.interrupted:
                        report += indexer.index_collection(f, kind)
        finally:
            signal.signal(signal.SIGTERM, old)
            bars.close()
    if output_format in ("json", "nl"):
        emit_json({**report.to_dict(), "index": idx.location}, "json")
    else:
        _print_report(report, idx.location)
    if report.interrupted:
        click.echo(
            f"Interrupted: the {report.indexed} items embedded so far are saved. "
            "Run the same command again to resume.",
            err=True,
        )
        sys.exit(130)


def encoder_for_index(index_path, clip_model, variant, offline, progress):
    """The encoder to index with: the one the index was built with, else ``clip_model`` (pulled if needed)."""
    from ..encode import load_encoder
    from ..models.store import resolve_clip_dir

    built = _built_with(index_path)
    if clip_model is None and built is not None:
        return load_encoder(resolve_clip_dir(built.location), variant=variant or built.variant)
    from ..models.pull import ensure_clip

    # First run: a registry model not on disk is downloaded (announced on stderr).
    clip_model = ensure_clip(
        clip_model, offline=offline, announce=announce, progress=progress_enabled(progress)
    )
    return load_encoder(resolve_clip_dir(clip_model), variant=variant or (built.variant if built else None))


def report_changed(report) -> bool:
    """Whether a watch sync did anything worth a line."""
    return bool(
        report.indexed
        or report.moved
        or report.copied
        or report.removed
        or report.failed
        or report.interrupted
    )


def _watch(folders, index_path, encoder, wait, output_format, bars_on, **indexer_options) -> None:
    """``retllm index FOLDERS --watch``: sync, then follow the folders until Ctrl-C or SIGTERM."""
    import threading

    from ..index.backend import open_index
    from ..index.indexer import Indexer
    from ..index.watch import FolderWatcher

    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt  # a second Ctrl-C: now
        stop.set()
        click.echo("Stopping after the batch in flight is committed (Ctrl-C again: now).", err=True)

    def on_report(report) -> None:
        if output_format in ("json", "nl"):
            emit_json({**report.to_dict(), "index": idx.location}, "nl")
        elif report_changed(report) or first[0]:
            _print_report(report, idx.location)
        first[0] = False

    first = [True]
    with open_index(index_path, writable=True, wait=wait) as idx:
        bars = Bars(bars_on)
        indexer = Indexer(idx, encoder, progress=bars, **indexer_options)
        watcher = FolderWatcher(indexer, [str(f) for f in folders], on_report=on_report, stop=stop)
        old_int = signal.signal(signal.SIGINT, on_signal)
        old_term = signal.signal(signal.SIGTERM, on_signal)
        try:
            if output_format not in ("json", "nl"):
                click.echo(f"Watching {', '.join(map(str, folders))} (Ctrl-C stops).", err=True)
            interrupted = watcher.run()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            bars.close()
    if interrupted:
        click.echo(
            "Interrupted: committed batches are saved. Run the same command again to resume.", err=True
        )
        sys.exit(130)
    click.echo("Stopped: everything seen is committed.", err=True)


def _built_with(index_path):
    """The encoder an existing index was built with (None: no index there yet)."""
    from ..errors import IndexNotFound
    from ..index.backend import open_index

    try:
        with open_index(index_path) as idx:
            return idx.encoder_info()
    except IndexNotFound:
        return None


def _print_report(report, directory: str) -> None:
    parts = [f"{report.indexed} indexed"]
    if report.reembedded:
        parts.append(f"{report.reembedded} re-embedded (transparency now composited onto white)")
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
    if report.unchecked:
        click.echo(
            f"{report.unchecked} images could not be checked for transparency (gone, changed or unreadable "
            "in folders not indexed now); the next 'retllm index' checks again",
            err=True,
        )
    if report.warned:
        click.echo(
            f"{report.warned} indexed with a decoder warning. List them with: retllm index --errors", err=True
        )
