"""docs/cli.md is every command's ``--help``, generated with cog: stale, it fails here."""

from __future__ import annotations

from pathlib import Path

import click
from cogapp import Cog

from retllm_lite.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _titles(command: click.Command, path: tuple[str, ...] = ()) -> list[str]:
    titles = [" ".join(("retllm", *path))]
    for name in sorted(getattr(command, "commands", {})):
        titles += _titles(command.commands[name], (*path, name))
    return titles


def test_cli_reference_is_what_help_prints_now():
    status = Cog().main(["cog", "--check", str(DOC)])
    assert status == 0, "docs/cli.md no longer matches --help: run 'cog -r docs/cli.md' and commit it"


def test_cli_reference_has_a_section_for_every_command():
    headings = {line[3:] for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("## ")}
    titles = _titles(cli)
    assert len(titles) > 10 and set(titles) <= headings, sorted(set(titles) - headings)
