"""The encoder an index was built with, kept in its meta: read, written and compared the
same way by every store (the local catalog, LanceDB)."""

from __future__ import annotations

from collections.abc import Mapping

from ..encode.base import EncoderInfo
from ..errors import EncoderMismatch

ENCODER_KEYS = ("name", "manifest_sha256", "variant", "dim", "location")


def encoder_meta(info: EncoderInfo) -> dict[str, str]:
    """The meta entries that record ``info``."""
    return {f"encoder.{k}": str(getattr(info, k)) for k in ENCODER_KEYS}


def encoder_from_meta(meta: Mapping[str, str]) -> EncoderInfo | None:
    """The recorded encoder, or None for an index nothing was written to yet."""
    if "encoder.manifest_sha256" not in meta:
        return None
    return EncoderInfo(
        name=meta["encoder.name"],
        manifest_sha256=meta["encoder.manifest_sha256"],
        variant=meta["encoder.variant"],
        dim=int(meta["encoder.dim"]),
        location=meta["encoder.location"],
    )


def encoder_dict(info: EncoderInfo | None) -> dict | None:
    """``info`` as plain values, for stats and ``--json``."""
    return None if info is None else {k: getattr(info, k) for k in ENCODER_KEYS}


def require_same_encoder(location: str, built: EncoderInfo | None, info: EncoderInfo) -> None:
    """Raise EncoderMismatch unless ``info`` is the encoder that built the index at ``location``."""
    if built is None or built.key == info.key:
        return
    if built.dim != info.dim:
        what = f"{info.dim}-dim vectors; the index holds {built.dim}-dim ones"
    else:
        what = "different weights (manifest sha256 or variant differ)"
    raise EncoderMismatch(
        f"{location}: built with {built.name} {built.variant} "
        f"(manifest {built.manifest_sha256[:12]}…), but {info.name} {info.variant} "
        f"(manifest {info.manifest_sha256[:12]}…) has {what}",
        hint=f"use --clip-model {built.location} (and --variant {built.variant}), "
        "or another --index for the new model",
    )
