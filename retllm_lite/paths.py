"""Where things live on disk: environment variables first, then XDG base directories."""

from __future__ import annotations

import os
from pathlib import Path

APP = "retllm-lite"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def data_dir() -> Path:
    """Persistent user data (indexes): $RETLLM_DATA_DIR, else $XDG_DATA_HOME/retllm-lite."""
    if os.environ.get("RETLLM_DATA_DIR"):
        return Path(os.environ["RETLLM_DATA_DIR"]).expanduser()
    return _xdg("XDG_DATA_HOME", ".local/share") / APP


def cache_dir() -> Path:
    """Re-creatable files (models, converters, embeddings): $RETLLM_CACHE_DIR, else XDG cache."""
    if os.environ.get("RETLLM_CACHE_DIR"):
        return Path(os.environ["RETLLM_CACHE_DIR"]).expanduser()
    return _xdg("XDG_CACHE_HOME", ".cache") / APP


def models_dir() -> Path:
    """Downloaded and exported models: $RETLLM_MODELS_DIR, else <cache>/models."""
    if os.environ.get("RETLLM_MODELS_DIR"):
        return Path(os.environ["RETLLM_MODELS_DIR"]).expanduser()
    return cache_dir() / "models"


def default_index_dir() -> Path:
    """The index used when --index is not given: $RETLLM_INDEX, else <data>/index."""
    if os.environ.get("RETLLM_INDEX"):
        return Path(os.environ["RETLLM_INDEX"]).expanduser()
    return data_dir() / "index"
