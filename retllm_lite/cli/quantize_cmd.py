"""``retllm quantize``: export models (torch at export time only)."""

from __future__ import annotations

from pathlib import Path

import click

from .app import Group, cli
from .output import emit_json, output_options


@cli.group("quantize", cls=Group)
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
    from ..quantize.clip import export_open_clip

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
