"""An HTML gallery of search results: one self-contained page a browser opens offline.

Everything the page shows is inside it: thumbnails are downsized JPEG ``data:`` URIs,
the CSS is inline, there is no script, and a Content-Security-Policy forbids loading
anything from elsewhere. Every string that comes from the user's files (paths,
captions, the query) goes through ``html.escape`` after ``display.printable``, so a
file named ``<script>.jpg`` is shown, not run, and a name that is not UTF-8 shows its
undecodable bytes as ``\\xNN``.

Works for coarse results and for reranked ones: P(True), entropy, visual enhancement
and the coarse rank of a moved result are shown when the hits carry them.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import BadInput
from .display import printable
from .thumbnails import ImageLoadError, jpeg_data_uri, make_thumbnail

if TYPE_CHECKING:
    from ..pipeline import SearchHit

DEFAULT_THUMB_PX = 256
QUERY_THUMB_PX = 160

# No script, no network: images only from data: URIs, styles only from this page.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
:root { color-scheme: light; --fg: #1d1d1f; --muted: #6e6e73; --line: #d2d2d7; --card: #fafafa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: #fff; }
header { display: flex; gap: 20px; align-items: flex-start; margin-bottom: 20px;
         padding-bottom: 16px; border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0 0 6px; }
.query-text { font-size: 20px; margin: 0 0 6px; overflow-wrap: anywhere; }
.meta { color: var(--muted); margin: 0; }
.query-image { margin: 0; max-width: 200px; }
.query-image img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
.query-image figcaption { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
ol.results { list-style: none; margin: 0; padding: 0; display: grid; gap: 16px;
             grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); }
li.hit { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
li.hit figure { margin: 0; }
.thumb { display: flex; align-items: center; justify-content: center; min-height: 120px;
         background: #eee; border-radius: 4px; overflow: hidden; }
.thumb img { display: block; max-width: 100%; height: auto; }
.unreadable { color: var(--muted); font-size: 12px; padding: 12px; text-align: center; }
blockquote.caption { margin: 0; padding: 10px; background: #fff; border-left: 3px solid var(--line);
                     white-space: pre-wrap; overflow-wrap: anywhere; max-height: 12em; overflow: auto; }
figcaption { margin-top: 8px; }
.rank { font-weight: 600; }
.moved { font-weight: 400; font-size: 12px; padding: 1px 6px; border-radius: 10px;
         margin-left: 6px; border: 1px solid var(--line); }
.name { font-weight: 600; overflow-wrap: anywhere; }
.dir { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
dl.scores { display: grid; grid-template-columns: auto 1fr; gap: 0 10px; margin: 6px 0 0;
            font-size: 12px; font-variant-numeric: tabular-nums; }
dl.scores dt { color: var(--muted); }
dl.scores dd { margin: 0; }
footer { margin-top: 24px; color: var(--muted); font-size: 12px; }
"""


@dataclass(frozen=True)
class GalleryQuery:
    """What was searched for: text, an image (path), or both (a composed query)."""

    text: str | None = None
    image: str | os.PathLike | None = None
    image_weight: float | None = None


def _e(value: str | None, keep_newlines: bool = False) -> str:
    """Escape for text and for double-quoted attribute values."""
    return escape(printable(value, keep_newlines=keep_newlines), quote=True)


def _file_uri(path: str) -> str | None:
    try:
        return Path(os.path.abspath(path)).as_uri()
    except ValueError:
        return None


def _thumb_html(path: str, thumb_px: int, alt: str) -> str:
    try:
        img = make_thumbnail(path, thumb_px)
    except ImageLoadError as exc:
        return f'<div class="thumb"><p class="unreadable">cannot show this image: {_e(str(exc))}</p></div>'
    tag = (
        f'<img src="{jpeg_data_uri(img)}" width="{img.width}" height="{img.height}" '
        f'alt="{_e(alt)}" loading="eager">'
    )
    uri = _file_uri(path)
    if uri is None:
        return f'<div class="thumb">{tag}</div>'
    return f'<a class="thumb" href="{escape(uri, quote=True)}">{tag}</a>'


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _moved_html(hit: SearchHit) -> str:
    if hit.coarse_rank is None or hit.coarse_rank == hit.rank:
        return ""
    arrow, kind = ("↑", "up") if hit.coarse_rank > hit.rank else ("↓", "down")
    return (
        f'<span class="moved {kind}" title="rank {hit.coarse_rank} before reranking">'
        f"{arrow} from #{hit.coarse_rank}</span>"
    )


def _scores_html(hit: SearchHit) -> str:
    rows = [("CLIP", _fmt(hit.clip_score if hit.clip_score is not None else hit.score))]
    if hit.p_true is not None:
        rows.append(("P(True)", _fmt(hit.p_true)))
    if hit.entropy is not None:
        rows.append(("entropy", _fmt(hit.entropy)))
    if hit.enhanced is not None:
        rows.append(("enhanced", "yes" if hit.enhanced else "no"))
    cells = "".join(f'<dt>{escape(k)}</dt><dd class="{escape(_css_name(k))}">{v}</dd>' for k, v in rows)
    return f'<dl class="scores">{cells}</dl>'


def _css_name(label: str) -> str:
    return {"CLIP": "clip", "P(True)": "p-true", "entropy": "entropy", "enhanced": "enhanced"}[label]


def _hit_html(hit: SearchHit, thumb_px: int) -> str:
    parts: list[str] = []
    has_image = hit.modality != "text" and hit.path is not None
    name = os.path.basename(hit.path) if hit.path else None
    if has_image:
        parts.append(_thumb_html(hit.path, thumb_px, alt=name or ""))
    if hit.text is not None and (hit.modality in ("text", "image+text") or not has_image):
        parts.append(f'<blockquote class="caption">{_e(hit.text, keep_newlines=True)}</blockquote>')
    label = []
    label.append(f'<div class="rank">#{hit.rank}{_moved_html(hit)}</div>')
    if hit.path is not None:
        label.append(f'<div class="name">{_e(name)}</div>')
        label.append(f'<div class="dir">{_e(os.path.dirname(hit.path))}</div>')
    elif hit.item_id is not None:
        label.append(f'<div class="name">{_e(hit.item_id)}</div>')
    label.append(_scores_html(hit))
    attrs = f'class="hit" id="hit-{hit.rank}" data-rank="{hit.rank}" data-modality="{_e(hit.modality)}"'
    if hit.coarse_rank is not None:
        attrs += f' data-coarse-rank="{hit.coarse_rank}"'
    title = f' title="{_e(hit.path)}"' if hit.path else ""
    return (
        f"<li {attrs}{title}><figure>{''.join(parts)}<figcaption>{''.join(label)}</figcaption></figure></li>"
    )


def _query_html(query: GalleryQuery, n_hits: int, reranked: bool, generated: str) -> str:
    out = ["<header>"]
    if query.image is not None:
        path = os.fspath(query.image)
        try:
            img = make_thumbnail(path, QUERY_THUMB_PX)
            size = f'width="{img.width}" height="{img.height}"'
            pic = f'<img src="{jpeg_data_uri(img)}" {size} alt="query image">'
        except ImageLoadError as exc:
            pic = f'<p class="unreadable">cannot show the query image: {_e(str(exc))}</p>'
        out.append(f'<figure class="query-image">{pic}<figcaption>{_e(path)}</figcaption></figure>')
    out.append("<div>")
    out.append("<h1>retllm search</h1>")
    if query.text:
        out.append(f'<p class="query-text">“{_e(query.text)}”</p>')
    meta = [f"{n_hits} result{'s' if n_hits != 1 else ''}"]
    if query.text and query.image is not None and query.image_weight is not None:
        meta.append(f"image weight {query.image_weight:g}")
    meta.append("reranked by P(True)" if reranked else "CLIP ranking")
    meta.append(escape(generated))
    out.append(f'<p class="meta">{" · ".join(meta)}</p>')
    out.append("</div></header>")
    return "".join(out)


def _title(query: GalleryQuery) -> str:
    if query.text:
        return f"retllm: {query.text}"
    if query.image is not None:
        return f"retllm: like {os.path.basename(os.fspath(query.image))}"
    return "retllm results"


def render_gallery(
    hits: Sequence[SearchHit],
    query: GalleryQuery,
    thumb_px: int = DEFAULT_THUMB_PX,
    generated: str | None = None,
) -> str:
    """The whole page as a string. ``generated`` is the time shown (default: now)."""
    if generated is None:
        generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    reranked = any(h.p_true is not None for h in hits)
    items = "\n".join(_hit_html(h, thumb_px) for h in hits)
    body = f'<ol class="results">\n{items}\n</ol>' if hits else '<p class="empty">No results.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n'
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP, quote=True)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="retllm-lite {escape(__version__)}">\n'
        f"<title>{_e(_title(query))}</title>\n"
        f"<style>{_CSS}</style>\n"
        "</head>\n<body>\n"
        f"{_query_html(query, len(hits), reranked, generated)}\n"
        f"<main>\n{body}\n</main>\n"
        f"<footer>retllm-lite {escape(__version__)}: thumbnails are embedded; "
        "click one to open the original file.</footer>\n"
        "</body>\n</html>\n"
    )


def write_gallery(
    path: str | os.PathLike,
    hits: Sequence[SearchHit],
    query: GalleryQuery,
    thumb_px: int = DEFAULT_THUMB_PX,
) -> Path:
    """Render and write the page atomically (temporary file, then rename). Returns the path."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise BadInput(f"{out}: is a folder", hint="give a file name for --html, e.g. results.html")
    parent = out.parent
    if not parent.is_dir():
        raise BadInput(f"{out}: folder {parent} does not exist", hint="create it or pick another --html path")
    page = render_gallery(hits, query, thumb_px=thumb_px)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise BadInput(
            f"{out}: cannot write the gallery ({exc.strerror})", hint="pick a writable path"
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(page)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a page is as readable as any new file
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BadInput(
            f"{out}: cannot write the gallery ({exc.strerror})", hint="pick a writable path"
        ) from None
    return out
