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
@click.option(
    "--int8-min-cosine",
    "int8_bar",
    default=0.999,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Parity bar for an int8 tower (mean cosine to the source model on random inputs); "
    "a tower below it on this CPU stays fp32.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@output_options()
def quantize_clip_cmd(
    arch, hf_dir, pretrained, random_init, out_dir, seed, int8, int8_bar, force, output_format
):
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

        manifest = export_hf_clip(
            hf_dir, out_dir, int8=int8, force=force, log=log, int8_min_mean_cosine=int8_bar
        )
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
            int8_min_mean_cosine=int8_bar,
        )
    if output_format in ("json", "nl"):
        emit_json(manifest)
    else:
        from ..encode.manifest import int8_summary

        variants = ", ".join(manifest["variants"])
        click.echo(f"wrote {out_dir} ({variants}); use it with --clip-model {out_dir}")
        for tower, line in int8_summary(manifest).items():
            click.echo(f"  {tower} tower: {line}")


@quantize_group.command("vlm")
@click.argument("hf_dir", required=False, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--type",
    "text_type",
    type=click.Choice(["f16", "q8_0", "q4_k_m", "f32"]),
    default="q4_k_m",
    show_default=True,
    help="Text model type (the llama.cpp quantizer runs on the text model only).",
)
@click.option(
    "--mmproj-type",
    type=click.Choice(["f16", "q8_0", "f32"]),
    default="f16",
    show_default=True,
    help="Projector type (written by the converter itself, never by the quantizer).",
)
@click.option(
    "--random-init",
    is_flag=True,
    help="Build a tiny random Gemma 3 VLM and convert it (tests and smoke runs; no HF_DIR).",
)
@click.option(
    "--llama-cpp",
    "llama_cpp_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Use this llama.cpp checkout's converter (default: the one matching llama-cpp-python).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@output_options()
def quantize_vlm_cmd(
    hf_dir, out_dir, text_type, mmproj_type, random_init, llama_cpp_dir, force, output_format
):
    """Convert a Hugging Face VLM checkout HF_DIR to a GGUF text model + mmproj, checked by scoring.

    Uses llama.cpp's own converter at the commit llama-cpp-python was built from, then loads
    the result and scores a pair; writes manifest.json with sha256s.
    """
    import tempfile

    from ..quantize.vlm import convert_vlm

    if bool(hf_dir) == bool(random_init):
        raise click.UsageError("give HF_DIR or --random-init")
    with tempfile.TemporaryDirectory(prefix="retllm-tiny-vlm-") as tmp:
        if random_init:
            from ..quantize.tiny_vlm import build_tiny_gemma3

            click.echo("building a tiny random Gemma 3 checkout", err=True)
            hf_dir = build_tiny_gemma3(Path(tmp) / "tiny-gemma3")
        click.echo(f"converting {hf_dir} ({text_type}, mmproj {mmproj_type})", err=True)
        manifest = convert_vlm(
            hf_dir,
            out_dir,
            text_type=text_type,
            mmproj_type=mmproj_type,
            llama_cpp_dir=llama_cpp_dir,
            overwrite=force,
        )
    if output_format in ("json", "nl"):
        emit_json(manifest)
    else:
        smoke = manifest.get("smoke", {})
        click.echo(
            f"wrote {out_dir}: {manifest['text']['file']} + {manifest['mmproj']['file']} "
            f"(smoke pair P(True) {smoke.get('p_true', float('nan')):.4f}); "
            f"use it with --rerank --vlm-model {out_dir}"
        )
