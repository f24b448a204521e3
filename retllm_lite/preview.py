"""Kept for code written against 0.1.0, which README documented as ``retllm_lite.preview``:
terminal previews are ``retllm_lite.view.preview`` now. Import from there."""

from .view.preview import (
    CHOICES,
    PROTOCOLS,
    ProtocolChoice,
    ThumbnailEncoder,
    cell_pixels,
    choose_protocol,
    detect_protocol,
    hit_header,
    passthrough_for,
    preview_encoder,
    write_previews,
)

__all__ = [
    "CHOICES",
    "PROTOCOLS",
    "ProtocolChoice",
    "ThumbnailEncoder",
    "cell_pixels",
    "choose_protocol",
    "detect_protocol",
    "hit_header",
    "passthrough_for",
    "preview_encoder",
    "write_previews",
]
