"""Seeing results: ``--preview`` (thumbnails in the terminal) and ``--html``/``--open``
(a self-contained gallery page). Shared by commands that print search results.

``view_options`` adds the four options to a command and hands it one ``view``
argument (a ``ResultsView``), so a command needs two lines to support them.
"""

from __future__ import annotations

import functools
import os
import sys
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import MissingDependency
from ..paths import cache_dir
from ..view.preview import CHOICES, PROTOCOLS

if TYPE_CHECKING:
    from ..pipeline import SearchHit


def _note(message: str) -> None:
    click.echo(f"retllm: {message}", err=True)


@dataclass(frozen=True)
class ResultsView:
    preview: bool = False
    protocol: str = "auto"
    html: Path | None = None
    open_page: bool = False

    def show(
        self,
        hits: Sequence[SearchHit],
        output_format: str,
        text: str | None = None,
        image: str | os.PathLike | None = None,
        image_weight: float | None = None,
    ) -> bool:
        """Write (and open) the gallery if asked, then draw terminal previews if asked and possible.

        Returns True when previews were drawn, i.e. the caller should print no table.
        """
        if self.html is not None or self.open_page:
            self._gallery(hits, text, image, image_weight)
        if not self.preview or not hits or self.protocol == "none":
            return False
        if output_format != "table":
            _note(f"--preview ignored with --{output_format} (previews are drawn only in the table view)")
            return False
        return self._previews(hits)

    def _gallery(self, hits, text, image, image_weight) -> None:
        from ..view.gallery import GalleryQuery, write_gallery

        target = self.html
        if target is None:  # --open alone: a page in the cache dir
            target = cache_dir() / "gallery" / "last-search.html"
            target.parent.mkdir(parents=True, exist_ok=True)
        query = GalleryQuery(text=text, image=image, image_weight=image_weight if text and image else None)
        written = write_gallery(target, hits, query)
        _note(f"wrote {written} ({len(hits)} result{'s' if len(hits) != 1 else ''})")
        if self.open_page:
            uri = written.resolve().as_uri()
            if not webbrowser.open(uri):
                _note(f"could not start a browser; open {uri}")

    def _previews(self, hits) -> bool:
        from ..view.preview import choose_protocol, preview_encoder, write_previews

        is_tty = sys.stdout.isatty()
        choice = choose_protocol(self.protocol, is_tty=is_tty, env=os.environ)
        if choice.protocol is None:
            _note(f"no previews: {choice.reason}; showing the table")
            return False
        try:
            encoder = preview_encoder(choice.protocol, sys.stdout.fileno() if is_tty else None)
        except MissingDependency as exc:
            _note(f"no previews: {exc}; showing the table")
            return False
        sys.stdout.flush()
        write_previews(hits, sys.stdout.buffer, encoder)
        return True


def view_options(fn: Callable) -> Callable:
    """Add --preview, --preview-protocol, --html and --open; pass them on as ``view``."""

    @functools.wraps(fn)
    def wrapper(*args, preview: bool, preview_protocol: str, html: Path | None, open_page: bool, **kwargs):
        view = ResultsView(
            preview=preview or preview_protocol in PROTOCOLS,
            protocol=preview_protocol,
            html=html,
            open_page=open_page,
        )
        return fn(*args, view=view, **kwargs)

    options = [
        click.option(
            "--preview",
            is_flag=True,
            help="Draw thumbnails in the terminal (Kitty, iTerm2 or sixel); else the table.",
        ),
        click.option(
            "--preview-protocol",
            type=click.Choice(CHOICES),
            default="auto",
            show_default=True,
            help="Image protocol for --preview; one other than auto/none implies --preview "
            "and draws even when output is not a terminal.",
        ),
        click.option(
            "--html",
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="PATH",
            help="Also write the results as a self-contained HTML page (thumbnails embedded).",
        ),
        click.option(
            "--open",
            "open_page",
            is_flag=True,
            help="Open the HTML page in a browser (without --html: a page in the cache dir).",
        ),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), wrapper)
