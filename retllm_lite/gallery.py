"""Kept for code written against 0.1.0, which README documented as ``retllm_lite.gallery``:
the HTML gallery is ``retllm_lite.view.gallery`` now. Import from there."""

from .view.gallery import CSP, DEFAULT_THUMB_PX, QUERY_THUMB_PX, GalleryQuery, render_gallery, write_gallery

__all__ = ["CSP", "DEFAULT_THUMB_PX", "QUERY_THUMB_PX", "GalleryQuery", "render_gallery", "write_gallery"]
