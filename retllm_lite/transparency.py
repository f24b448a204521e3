"""Images with transparency: composited onto one background before anything sees their pixels.

Clip art, logos, icons and screenshots often carry their shape in the alpha channel alone
(a black glyph on black, made visible by alpha). ``convert("RGB")`` drops alpha, so all such
images become the same blank square, for CLIP and for the VLM alike; open_clip's transform
and the Hugging Face processors do the same. Every path here that turns a file into pixels
(CLIP preprocessing, the reranker's bitmaps, thumbnails) calls ``flatten_transparency`` first.

Images without transparent pixels are returned unchanged, so they keep the exact code path
(and the bit-exact parity with open_clip and transformers) they had before.
"""

from __future__ import annotations

from PIL import Image

# White, because that is what image viewers, browsers and document editors show behind a
# transparent image: the picture the model sees is the picture the user sees. (Black would
# hide the many dark glyphs and line drawings drawn for light pages.)
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# What an index records (meta ``encoder.pixels``) once its vectors were computed this way;
# change it whenever ``flatten_transparency`` changes what the encoders see.
PIXELS_VERSION = "alpha-white-v1"

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})


def may_have_transparency(img: Image.Image) -> bool:
    """From the header alone (no decode): an alpha band or a transparent colour/palette entry."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _with_alpha(img: Image.Image) -> Image.Image:
    # P -> RGBA is also what Pillow asks for palette transparency given as bytes
    return img if img.mode == "RGBA" else img.convert("RGBA")


def has_transparent_pixels(img: Image.Image) -> bool:
    """True if some pixel is not fully opaque (decodes the image)."""
    if not may_have_transparency(img):
        return False
    return _with_alpha(img).getchannel("A").getextrema()[0] < 255


def flatten_transparency(img: Image.Image) -> Image.Image:
    """``img`` composited onto ``BACKGROUND`` (RGB) if any pixel is transparent, else ``img``.

    A palette image whose transparent entry no pixel uses comes back as a copy without the
    entry (same pixels, and no Pillow warning when it is later converted to RGB).
    """
    if not may_have_transparency(img):
        return img
    rgba = _with_alpha(img)
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:
        if "transparency" not in img.info:
            return img
        opaque = img.copy()
        del opaque.info["transparency"]
        return opaque
    out = Image.new("RGB", rgba.size, BACKGROUND)
    out.paste(rgba, mask=alpha)
    return out
