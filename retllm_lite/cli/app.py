"""The ``retllm`` click group, its error handling and the options commands share."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import click

from .. import __version__
from ..errors import RetllmError


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RetllmError as exc:
            if os.environ.get("RETLLM_DEBUG"):
                raise
            raise click.ClickException(str(exc)) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retllm")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """retllm: search your photos and captions offline (CLIP + a local VLM reranker).

    Defaults for --index, --clip-model, --vlm-model, -k and --rerank can live in
    $XDG_CONFIG_HOME/retllm-lite/config.toml. Shell completion (bash):
    eval "$(_RETLLM_COMPLETE=bash_source retllm)"
    """
    from ..config import default_map, load_config

    settings = load_config()
    if settings:
        ctx.default_map = default_map(cli.commands, settings)


class IndexSpec(click.ParamType):
    """``--index``: a folder (a Path), or ``lance:URI`` kept as text (``s3://`` must keep its ``//``)."""

    name = "PATH|lance:URI"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith("lance:"):
            return value
        return Path(value)


index_option = click.option(
    "--index",
    "index_path",
    type=IndexSpec(),
    envvar="RETLLM_INDEX",
    help="Index folder (default: $RETLLM_INDEX, else the XDG data dir), or lance:URI for a LanceDB "
    "index in a folder or on object storage (lance:s3://bucket/prefix).",
)
clip_option = click.option(
    "--clip-model",
    help="CLIP model: a registry name ('retllm models list'; downloaded on first use) or a folder "
    "from 'retllm quantize clip'.",
)
offline_option = click.option(
    "--offline",
    is_flag=True,
    help="Never download a model (also: RETLLM_OFFLINE=1 or HF_HUB_OFFLINE=1).",
)


def announce(message: str) -> None:
    """A line about what is happening (a download), on stderr."""
    click.echo(message, err=True)


vlm_model_option = click.option(
    "--vlm-model",
    metavar="NAME_OR_PATH",
    envvar="RETLLM_VLM_MODEL",
    help="VLM: a registry name, a folder from 'retllm quantize vlm', or a .gguf (with --mmproj).",
)
mmproj_option = click.option(
    "--mmproj",
    metavar="PATH",
    envvar="RETLLM_MMPROJ",
    help="The VLM's projector GGUF (when --vlm-model is a .gguf file).",
)
rule_option = click.option(
    "--rule",
    type=click.Choice(["paper", "rounded", "raw", "normalized"]),
    default="paper",
    show_default=True,
    help="Fine ranking: P(True) truncated to 2 decimals, ties to the lower full-vocabulary entropy "
    "(paper, as the authors' code); rounded to 2 decimals, ties to top-10 entropy (rounded); "
    "unrounded P(True) (raw); or P(True)/(P(True)+P(False)) (normalized).",
)


def _gate_signal(ctx, param, value):
    if value is None:
        return None
    from ..errors import RetllmError
    from ..rerank.scorer import is_gate_signal

    try:
        if is_gate_signal(value):
            return value
    except RetllmError:
        pass
    raise click.BadParameter("use binary, top10, or exit-FIRST-LAST (e.g. exit-6-15, the paper's)")


gate_signal_option = click.option(
    "--gate-signal",
    callback=_gate_signal,
    metavar="binary|top10|exit-A-B",
    help="What gated enhancement thresholds: the True/False decision's normalised entropy "
    "(binary, default), the final layer's normalised top-10 entropy (top10), or the paper's "
    "trigger, the largest top-10 entropy of the early exits after layers A..B (exit-6-15 as "
    "the authors' code; slower: one output-head product per layer).  [default: binary]",
)

variant_option = click.option(
    "--variant",
    type=click.Choice(["int8", "fp32"]),
    help="Model variant (default: the index's, else int8).",
)


def progress_enabled(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


SLOW_AFTER_S = 1.0  # a step taking longer than this says what it is doing


@contextlib.contextmanager
def slow_notice(message: str, enabled: bool) -> Iterator[None]:
    """Print ``message`` on stderr if the block still runs after ``SLOW_AFTER_S``, then its time."""
    if not enabled:
        yield
        return
    shown = threading.Event()
    t0 = time.perf_counter()

    def say() -> None:
        shown.set()
        click.echo(message, err=True)

    timer = threading.Timer(SLOW_AFTER_S, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if shown.is_set():
            click.echo(f"  done in {time.perf_counter() - t0:.1f} s", err=True)


class Bars:
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
            desc, unit = {
                "embed": ("indexing", "img"),
                "ann": ("ANN index", "vec"),
                "pixels": ("checking transparency", "img"),
            }.get(stage, (stage, "it"))
            bar = self.bars[stage] = tqdm(
                total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True
            )
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
