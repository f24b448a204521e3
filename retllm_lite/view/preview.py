"""Result thumbnails inline in the terminal: Kitty graphics, iTerm2 inline images or sixel.

The escape sequences are made by libchafa (through the ``chafa.py`` package, the
``preview`` extra), a maintained C library that speaks all three protocols and only
encodes: it never reads from or writes to the terminal itself. Which protocol to use
is decided here, from the environment (``detect_protocol``) or by the user; nothing is
drawn when standard output is not a terminal unless the user forced a protocol.
"""

from __future__ import annotations

import itertools
import os
import random
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ..errors import MissingDependency, require
from ..transparency import flatten_transparency
from .display import printable
from .thumbnails import ImageLoadError, make_thumbnail

if TYPE_CHECKING:
    from PIL import Image

    from ..pipeline import SearchHit

PROTOCOLS = ("kitty", "iterm2", "sixel")
CHOICES = ("auto", *PROTOCOLS, "none")
DEFAULT_CELL_PX = (10, 20)  # a VT340 cell; used when the terminal does not report its size in pixels
MAX_COLS = 24
MAX_ROWS = 8

# TERM values of terminals that draw sixel (and have no better protocol).
_SIXEL_TERMS = {"foot", "foot-extra", "mlterm", "yaft-256color", "contour", "xterm-sixel"}


def detect_protocol(env: Mapping[str, str]) -> str | None:
    """The image protocol the terminal described by ``env`` draws, or None if unknown.

    Inside tmux or screen nothing is detected: images need the multiplexer's
    passthrough, which is off by default; force a protocol to use it.
    """
    term = env.get("TERM", "")
    program = env.get("TERM_PROGRAM", "")
    if env.get("TMUX") or term.startswith(("screen", "tmux")):
        return None
    if env.get("KITTY_WINDOW_ID") or term == "xterm-kitty":
        return "kitty"
    if program == "ghostty" or term == "xterm-ghostty":
        return "kitty"
    if program in ("iTerm.app", "WezTerm", "mintty") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    if env.get("KONSOLE_VERSION") or term in _SIXEL_TERMS or "sixel" in term:
        return "sixel"
    return None


@dataclass(frozen=True)
class ProtocolChoice:
    protocol: str | None  # None: no previews
    reason: str


def choose_protocol(requested: str, is_tty: bool, env: Mapping[str, str]) -> ProtocolChoice:
    """Apply the rules: a forced protocol always wins; ``auto`` needs a terminal it recognises."""
    if requested not in CHOICES:
        raise ValueError(f"unknown preview protocol {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested == "none":
        return ProtocolChoice(None, "--preview-protocol none")
    if requested != "auto":
        return ProtocolChoice(requested, "forced")
    if not is_tty:
        return ProtocolChoice(None, "standard output is not a terminal")
    found = detect_protocol(env)
    if found is not None:
        return ProtocolChoice(found, "detected")
    if env.get("TMUX") or env.get("TERM", "").startswith(("screen", "tmux")):
        return ProtocolChoice(
            None, "inside tmux/screen (force one with --preview-protocol and enable passthrough)"
        )
    return ProtocolChoice(
        None,
        f"no image protocol known for this terminal (TERM={env.get('TERM') or 'unset'}); "
        "force one with --preview-protocol",
    )


def passthrough_for(env: Mapping[str, str]) -> str | None:
    """'tmux' or 'screen' when the sequences must be wrapped for a multiplexer."""
    if env.get("TMUX"):
        return "tmux"
    if env.get("STY") or env.get("TERM", "").startswith("screen"):
        return "screen"
    return None


def cell_pixels(fd: int) -> tuple[int, int]:
    """(width, height) of one terminal cell in pixels, from TIOCGWINSZ; a default if unknown."""
    try:
        import fcntl
        import struct
        import termios

        rows, cols, xpx, ypx = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except (ImportError, OSError, ValueError):
        return DEFAULT_CELL_PX
    if rows and cols and xpx >= cols and ypx >= rows:
        return xpx // cols, ypx // rows
    return DEFAULT_CELL_PX


def _load_chafa():
    try:
        return require("chafa", "preview", "terminal previews")
    except OSError as exc:  # the package is there but libchafa/glib cannot be loaded
        raise MissingDependency(
            f"terminal previews need libchafa, which did not load ({exc})",
            hint="install GLib (Debian: libglib2.0-0) or reinstall with: pip install 'retllm-lite[preview]'",
        ) from exc


class ThumbnailEncoder:
    """Encodes an RGB image as the escape sequences of one protocol, sized in terminal cells."""

    def __init__(
        self,
        protocol: str,
        max_cols: int = MAX_COLS,
        max_rows: int = MAX_ROWS,
        cell_px: tuple[int, int] = DEFAULT_CELL_PX,
        passthrough: str | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown image protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if passthrough not in (None, "tmux", "screen"):
            raise ValueError(f"unknown passthrough {passthrough!r}")
        chafa = _load_chafa()
        self._chafa = chafa
        self.protocol = protocol
        self.max_cols, self.max_rows = max_cols, max_rows
        self.cell_px = cell_px
        self.passthrough = passthrough
        self._mode = {
            "kitty": chafa.PixelMode.CHAFA_PIXEL_MODE_KITTY,
            "iterm2": chafa.PixelMode.CHAFA_PIXEL_MODE_ITERM2,
            "sixel": chafa.PixelMode.CHAFA_PIXEL_MODE_SIXELS,
        }[protocol]
        self._term_info = chafa.TermDb().get_fallback_info()
        start = random.randint(1, 255)
        self._ids = (1 + (start + i) % 255 for i in itertools.count())

    @property
    def thumb_px(self) -> int:
        """Pixels a thumbnail needs so the canvas is drawn without upscaling."""
        return max(self.max_cols * self.cell_px[0], self.max_rows * self.cell_px[1])

    def encode(self, img: Image.Image) -> bytes:
        chafa = self._chafa
        rgb = flatten_transparency(img).convert("RGB")
        cfg = chafa.CanvasConfig()
        cfg.pixel_mode = self._mode
        cfg.cell_width, cfg.cell_height = self.cell_px
        cfg.width, cfg.height = self.max_cols, self.max_rows
        cfg.calc_canvas_geometry(rgb.width, rgb.height, self.cell_px[0] / self.cell_px[1], zoom=True)
        if self.passthrough == "tmux":
            cfg.passthrough = chafa.Passthrough.CHAFA_PASSTHROUGH_TMUX
        elif self.passthrough == "screen":
            cfg.passthrough = chafa.Passthrough.CHAFA_PASSTHROUGH_SCREEN
        canvas = chafa.Canvas(cfg)
        pixels = (
            chafa.PixelType.CHAFA_PIXEL_RGB8,
            bytearray(rgb.tobytes()),
            rgb.width,
            rgb.height,
            rgb.width * 3,
        )
        if self.protocol == "kitty" and self.passthrough is not None:
            # Through a multiplexer chafa uses Kitty's Unicode placeholders, which need an
            # image id; each thumbnail gets its own so a later one does not replace it.
            image = chafa.Image()
            image.frame = chafa.Frame(*pixels)
            canvas.placement = chafa.Placement(image, next(self._ids))
        else:
            canvas.draw_all_pixels(*pixels)
        return bytes(canvas.print(self._term_info))


def hit_header(hit: SearchHit) -> str:
    """One line naming the result: rank, scores, coarse rank if reranking moved it, path."""
    clip = hit.clip_score if hit.clip_score is not None else hit.score
    parts = [f"{hit.rank:>3}", f"{clip:.3f}"]
    if hit.p_true is not None:
        parts.append(f"P(True) {hit.p_true:.3f}")
    if hit.coarse_rank is not None and hit.coarse_rank != hit.rank:
        parts.append(f"(was #{hit.coarse_rank})")
    parts.append(printable(hit.path or hit.item_id or ""))
    return "  ".join(parts)


def write_previews(hits: Sequence[SearchHit], out: BinaryIO, encoder: ThumbnailEncoder) -> None:
    """For each hit: its header line, then its thumbnail (or its caption, for a text item)."""
    for hit in hits:
        out.write((hit_header(hit) + "\n").encode("utf-8"))
        has_image = hit.modality != "text" and hit.path is not None
        if has_image:
            try:
                thumb = make_thumbnail(hit.path, encoder.thumb_px)
            except ImageLoadError as exc:
                out.write(f"     (cannot show this image: {printable(str(exc))})\n".encode())
            else:
                out.write(encoder.encode(thumb) + b"\n")
        if hit.text is not None and (hit.modality in ("text", "image+text") or not has_image):
            caption = textwrap.fill(
                printable(hit.text), width=76, initial_indent="     ", subsequent_indent="     "
            )
            out.write(caption.encode("utf-8") + b"\n")
        out.write(b"\n")
        out.flush()


def preview_encoder(
    protocol: str, out_fd: int | None, env: Mapping[str, str] | None = None
) -> ThumbnailEncoder:
    """A ThumbnailEncoder for the terminal on ``out_fd`` (None: not a terminal, default cell size)."""
    env = os.environ if env is None else env
    cell = cell_pixels(out_fd) if out_fd is not None else DEFAULT_CELL_PX
    return ThumbnailEncoder(protocol, cell_px=cell, passthrough=passthrough_for(env))
