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
    from ..index.store import Index

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
