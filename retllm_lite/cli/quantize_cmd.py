"""``retllm quantize``: export models (torch at export time only)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInput
from .app import Group, cli
from .output import emit_json, output_options


@cli.group("quantize", cls=Group)
def quantize_group() -> None:
    """Export models for retllm (needs the 'export' extra: torch, open_clip, optimum-onnx, onnx)."""


@quantize_group.command("clip")
@click.argument("arch", required=False)
@click.option(
    "--hf",
    "hf_dir",
    type=click.Path(path_type=Path),
    help="A local Hugging Face CLIPModel/SiglipModel checkout, exported with optimum-onnx (no ARCH).",
)
@click.option("--pretrained", help="open_clip pretrained tag (downloads) or a local checkpoint file.")
@click.option("--random-init", is_flag=True, help="Random weights: for tests and smoke runs.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--seed", default=None, type=int, help="Seed for --random-init.  [default: 0]")
@click.option("--int8/--no-int8", default=True, show_default=True, help="Also write an int8 variant.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@output_options()
def quantize_clip_cmd(arch, hf_dir, pretrained, random_init, out_dir, seed, int8, force, output_format):
    """Export a CLIP model to ONNX (fp32 + int8) with a verified manifest.

    \b
    retllm quantize clip ARCH (--pretrained TAG_OR_PATH | --random-init) --out DIR
        ARCH is an open_clip architecture (ViT-B-32) or a model-config .json file.
    retllm quantize clip --hf CHECKOUT --out DIR
        CHECKOUT is a local Hugging Face CLIP or SigLIP folder (config.json, weights,
        tokenizer and preprocessor files).
    """

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    if hf_dir is not None:
        if arch or pretrained or random_init or seed is not None:
            raise BadInput(
                "--hf exports a Hugging Face checkout: give no ARCH, --pretrained, --random-init or --seed"
            )
        from ..quantize.hf_clip import export_hf_clip

        manifest = export_hf_clip(hf_dir, out_dir, int8=int8, force=force, log=log)
    else:
        if not arch:
            raise BadInput("give an open_clip ARCH (with --pretrained or --random-init) or --hf CHECKOUT")
        from ..quantize.clip import export_open_clip

        manifest = export_open_clip(
            arch,
            out_dir,
            pretrained=pretrained,
            random_init=random_init,
            seed=0 if seed is None else seed,
            int8=int8,
            force=force,
            log=log,
        )
    if output_format in ("json", "nl"):
        emit_json(manifest)
    else:
        variants = ", ".join(manifest["variants"])
        click.echo(f"wrote {out_dir} ({variants}); use it with --clip-model {out_dir}")
