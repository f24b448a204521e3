"""Printing results: a readable table, ``--json`` (one array), ``--nl`` (one object a line),
or ``--paths`` (one path a line, raw bytes, for piping). Shared by every command that
prints results, so they all behave the same."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence

import click

from ..view.display import printable


def output_options(paths: bool = False):
    """Decorator adding --json/--nl (and --paths) to a command as ``output_format``."""

    def decorate(fn: Callable) -> Callable:
        choices = [
            click.option("--json", "output_format", flag_value="json", help="Print one JSON array."),
            click.option("--nl", "output_format", flag_value="nl", help="Print one JSON object a line."),
        ]
        if paths:
            choices.append(
                click.option(
                    "--paths",
                    "output_format",
                    flag_value="paths",
                    help="Print only paths, one a line (for xargs and friends).",
                )
            )
        fn = functools.reduce(lambda f, opt: opt(f), reversed(choices), fn)
        return click.option("--table", "output_format", flag_value="table", default=True, hidden=True)(fn)

    return decorate


def _clean(value):
    """JSON-safe: file names that are not UTF-8 print with backslash escapes."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def emit_json(rows: Sequence[dict] | dict, fmt: str = "json") -> None:
    if fmt == "nl" and isinstance(rows, list):
        for row in rows:
            click.echo(json.dumps(_clean(row), ensure_ascii=False))
    else:
        click.echo(json.dumps(_clean(rows), indent=2, ensure_ascii=False))


def emit_paths(paths: Sequence[str]) -> None:
    out = sys.stdout.buffer
    for p in paths:
        out.write(os.fsencode(p) + b"\n")
    out.flush()


def emit_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """columns: (key, header, format) where format is a str.format spec like '{:.3f}'."""
    if not rows:
        return
    cells = [[("" if r.get(k) is None else f.format(r[k])) for k, _h, f in columns] for r in rows]
    headers = [h for _k, h, _f in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    term = shutil.get_terminal_size((120, 20)).columns
    # the last column (path or text) takes what is left, truncated on the left
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    last = max(20, term - fixed) if sys.stdout.isatty() else widths[-1]

    def fmt_row(values: Sequence[str]) -> str:
        head = "  ".join(v.rjust(widths[i]) for i, v in enumerate(values[:-1]))
        tail = printable(values[-1])  # a name with ESC or newlines must not drive the terminal
        if len(tail) > last:
            tail = "…" + tail[-(last - 1) :]
        return f"{head}  {tail}" if head else tail

    click.echo(click.style(fmt_row(headers), bold=True))
    for c in cells:
        click.echo(fmt_row(c))
