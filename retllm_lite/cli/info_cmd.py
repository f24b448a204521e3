"""``retllm info``: what an index holds."""

from __future__ import annotations

import click

from .app import cli, index_option
from .output import emit_json, output_options


@cli.command("info")
@index_option
@output_options()
def info_cmd(index_path, output_format):
    """Show what an index holds and which model built it."""
    from ..index.backend import open_index

    with open_index(index_path) as idx:
        stats = idx.stats()
    if output_format in ("json", "nl"):
        emit_json(stats)
        return
    enc = stats["encoder"] or {}
    size = stats["bytes_on_disk"]
    click.echo(f"index:    {stats['path']}" + (f" ({size / 1e6:.1f} MB)" if size is not None else ""))
    click.echo(f"encoder:  {enc.get('name', '-')} {enc.get('variant', '')} at {enc.get('location', '-')}")
    items = stats["items"]
    click.echo(f"vectors:  {items['vectors']}  errors: {items['errors']}  skipped paths: {items['skipped']}")
    if stats.get("backend") == "lance":
        search = f"lancedb {stats['ann'] or 'exact'}"
    else:
        search = f"hnsw ({stats['ann']})" if stats["ann"] else "exact"
    click.echo(f"search:   {search}")
