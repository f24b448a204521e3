"""``retllm doctor``: versions, CPU features, models, index, and what to do about problems."""

from __future__ import annotations

import sys

import click

from .app import cli, index_option
from .output import emit_json, output_options


@cli.command("doctor")
@index_option
@output_options()
def doctor_cmd(index_path, output_format):
    """Check this machine: runtime versions, CPU features, models, the index.

    Every problem found comes with what to do about it. Exits 1 when there is an error.
    """
    from ..doctor import diagnose

    report = diagnose(index_path)
    errors = [p for p in report["problems"] if p["level"] == "error"]
    if output_format in ("json", "nl"):
        emit_json(report)
    else:
        _print(report)
    if errors:
        sys.exit(1)


def _mb(n: int | None) -> str:
    return "size not measured on object storage" if n is None else f"{n / 1e6:,.1f} MB"


def _print_int8(info: dict | None) -> None:
    """Per tower, what the CLIP model's int8 variant runs (chosen by parity on the exporting CPU)."""
    for tower, line in ((info or {}).get("towers") or {}).items():
        click.echo(f"             {tower}: {line}")


def _print(r: dict) -> None:
    v = r["versions"]
    shown = ", ".join(f"{k} {val or '-'}" for k, val in v.items())
    click.echo(f"versions:  {shown}")
    cpu = r["cpu"]
    feats = " ".join(f"{k}{'+' if on else '-'}" for k, on in cpu["features"].items()) or "unknown"
    click.echo(
        f"cpu:       {cpu['model'] or cpu['machine']}, {cpu['cores']} cores; {feats} "
        f"(int8 kernels: {cpu['int8_kernels']})"
    )
    hub = r["hub"]
    click.echo(f"hub:       {hub['endpoint']}{' (offline)' if hub['offline'] else ''}")
    click.echo(f"models:    {r['paths']['models']}")
    if not r["models"]:
        click.echo("           (none)")
    for m in r["models"]:
        check = {True: "verified", False: "FAILED", None: "-"}[m.get("verified")]
        click.echo(
            f"           {m['name']:<22} {m['state']:<8} {m['kind'] or '?':<5} {_mb(m['bytes']):>11}  {check}"
        )
        _print_int8(m.get("int8"))
    idx = r["index"]
    if idx:
        enc = idx.get("encoder") or {}
        vectors = idx["items"].get("vectors", 0)
        click.echo(
            f"index:     {idx['path']} ({_mb(idx['bytes_on_disk'])}, {vectors} vectors, "
            f"model {enc.get('name', '-')})"
        )
        _print_int8(idx.get("clip_int8"))
    else:
        click.echo("index:     none")
    problems = r["problems"]
    if not problems:
        click.echo("no problems found")
        return
    click.echo("")
    for p in problems:
        click.echo(f"{p['level']}: {p['problem']}")
        click.echo(f"  fix: {p['fix']}")
