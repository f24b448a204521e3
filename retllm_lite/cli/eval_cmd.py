"""``retllm eval``: Recall@K of the coarse stage, the fine stage and its ablations on a dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..rerank.scorer import DEFAULT_GATE, Enhance
from .app import (
    Bars,
    announce,
    cli,
    clip_option,
    gate_signal_option,
    mmproj_option,
    offline_option,
    progress_enabled,
    rule_option,
    vlm_model_option,
)
from .output import emit_json, output_options
from .runtime_options import vlm_runtime_options

DEFAULT_LIMIT = 100


class StageBars(Bars):
    """One tqdm bar per stage (with its ETA), closed as soon as the stage is done."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        super().__call__(stage, done, total)
        if self.enabled and done >= total and stage in self.bars:
            self.bars.pop(stage).close()


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


def _ints(values: tuple[str, ...], name: str) -> tuple[int, ...]:
    out = []
    for v in values:
        for part in v.split(","):
            try:
                out.append(int(part))
            except ValueError:
                raise click.BadParameter(f"{part!r} is not a whole number", param_hint=name) from None
    return tuple(out)


@cli.command("eval")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "karpathy", "jsonl", "folder"]),
    default="auto",
    show_default=True,
    help="Dataset format: Karpathy-split JSON, JSONL {image, captions}, or a folder of images + .txt.",
)
@click.option("--split", help="Split to evaluate (Karpathy JSON: default test; 'all' for every image).")
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    help="Folder relative image paths resolve against (default: the dataset file's folder).",
)
@click.option(
    "--max-captions",
    type=click.IntRange(min=0),
    help="Captions kept per image (default: 5 for Karpathy JSON, else all; 0: all).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Evaluate the first N usable images and their captions (0: the whole split).",
)
@clip_option
@click.option(
    "--variant", type=click.Choice(["int8", "fp32"]), help="CLIP variant (default: the model's, int8)."
)
@vlm_model_option
@mmproj_option
@click.option(
    "--k",
    "ks",
    multiple=True,
    metavar="K",
    help="Rerank depth, repeatable or comma-separated (default 5; e.g. --k 3 --k 5 --k 10).",
)
@click.option(
    "--enhance",
    default="off,gated",
    show_default=True,
    help="Visual enhancement modes to compare: off, gated, gated:THRESHOLD, always (comma-separated).",
)
@click.option(
    "--gate",
    type=click.FloatRange(0, 1),
    default=DEFAULT_GATE,
    show_default=True,
    help="Threshold of a plain 'gated' in --enhance, on --gate-signal.",
)
@gate_signal_option
@click.option(
    "--tie-break",
    type=click.Choice(["both", "entropy", "none"]),
    default="both",
    show_default=True,
    help="Rank ties by entropy (the paper), leave them in CLIP order (none), or report both.",
)
@rule_option
@click.option("--listwise", is_flag=True, help="Also image→text listwise: the VLM picks 1 of k captions.")
@click.option("--no-fine", is_flag=True, help="Coarse stage (CLIP) only: no reranker needed.")
@click.option(
    "--direction",
    type=click.Choice(["both", "t2i", "i2t"]),
    default="both",
    show_default=True,
    help="text→image (t2i), image→text (i2t) or both.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write results.json, report.md and recall_at_1.png to this folder.",
)
@vlm_runtime_options
@offline_option
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@output_options()
def eval_cmd(
    dataset,
    fmt,
    split,
    images,
    max_captions,
    limit,
    clip_model,
    variant,
    vlm_model,
    mmproj,
    ks,
    enhance,
    gate,
    gate_signal,
    tie_break,
    rule,
    listwise,
    no_fine,
    direction,
    out,
    vlm_runtime,
    offline,
    progress,
    output_format,
):
    """Evaluate retrieval on DATASET as the RetLLM paper does: Recall@1/5/10, text→image and
    image→text, for CLIP alone and for every fine-stage configuration asked for.

    CLIP vectors and VLM scores are cached, so a re-run (or one with another configuration)
    computes only what is new. The default run evaluates the first 100 images.
    """
    from ..encode import load_encoder
    from ..eval.cache import EvalCache
    from ..eval.datasets import load_dataset
    from ..eval.protocol import Settings
    from ..eval.report import summary_lines, text_table, write_outputs
    from ..eval.runner import Evaluator
    from ..models.pull import ensure_clip
    from ..models.store import resolve_clip_dir

    if gate_signal and gate_signal.startswith("exit-"):
        raise click.UsageError(
            "eval caches each pass's scores without early-exit entropies: use --gate-signal binary or top10"
        )
    settings = Settings(
        ks=_ints(ks, "--k") or (5,),
        enhance=tuple(
            Enhance.parse(
                f"gated:{gate}" if e == "gated" else e, signal=gate_signal if e.startswith("gated") else None
            )
            for e in _words(enhance)
        ),
        tie_breaks={"both": (True, False), "entropy": (True,), "none": (False,)}[tie_break],
        rule=rule,
        listwise=listwise,
        fine=not no_fine,
        directions=("t2i", "i2t") if direction == "both" else (direction,),
    )
    data = load_dataset(
        dataset, format=fmt, split=split, images=images, limit=limit, max_captions=max_captions
    )
    counts = data.skipped_counts()
    if counts:
        what = ", ".join(f"{n} {why}" for why, n in sorted(counts.items()))
        n = sum(counts.values())
        announce(f"skipped {n} image{'s' * (n != 1)} ({what}); listed in --json and the report")
    if data.limit and data.available > data.n_images:
        announce(f"evaluating the first {data.n_images} of {data.available} images (--limit 0: all)")
    show = progress_enabled(progress)
    clip_name = ensure_clip(clip_model, offline=offline, announce=announce, progress=show)
    threads = vlm_runtime.threads  # CLIP's too
    encoder = load_encoder(
        resolve_clip_dir(clip_name), variant=variant, **({"threads": threads} if threads else {})
    )
    backend = None
    if settings.fine:
        from ..models.pull import ensure_vlm
        from ..rerank.llama_mtmd import LlamaMtmdScorer

        model_path, mmproj_path = ensure_vlm(
            vlm_model, mmproj, offline=offline, announce=announce, progress=show
        )
        backend = LlamaMtmdScorer(
            model_path, mmproj_path, embedding_cache=True, **vlm_runtime.scorer_kwargs()
        )
    bars = StageBars(show)
    cache = EvalCache()
    try:
        report = Evaluator(encoder, backend, cache=cache, progress=bars, log=announce).run(data, settings)
    except KeyboardInterrupt:
        bars.close()
        click.echo("interrupted: finished work is cached, run the same command to resume", err=True)
        sys.exit(130)
    finally:
        bars.close()
        cache.close()
        if backend is not None:
            backend.close()
    written = write_outputs(report, out) if out is not None else None
    if output_format in ("json", "nl"):
        doc = report.to_dict()
        emit_json(doc["results"] if output_format == "nl" else doc, output_format)
    else:
        for line in summary_lines(report):
            click.echo(line)
        click.echo("")
        click.echo(text_table(report))
        for note in report.notes:
            click.echo(f"note: {note}")
    if written:
        announce("wrote " + ", ".join(str(p) for p in written.values()))
