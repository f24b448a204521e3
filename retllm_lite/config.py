"""The user's defaults: ``$XDG_CONFIG_HOME/retllm-lite/config.toml`` (or ``$RETLLM_CONFIG``).

::

    index = "~/photo-index"        # --index
    clip_model = "clip-vit-b-32"   # --clip-model
    vlm_model = "qwen2-vl-2b"      # --vlm-model
    k = 20                         # -k of retllm search, results per page of retllm serve
    rerank = true                  # --rerank on by default (retllm search, and retllm serve's switch)

Command-line options win, then environment variables (``RETLLM_INDEX``, ...), then this
file, then the built-in defaults: the file becomes click's ``default_map``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import BadInput
from .paths import APP, _xdg

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# config key -> (command parameter name, type, what it is)
KEYS: dict[str, tuple[str, type, str]] = {
    "index": ("index_path", str, "index folder"),
    "clip_model": ("clip_model", str, "CLIP model name or folder"),
    "vlm_model": ("vlm_model", str, "VLM name, folder or .gguf"),
    "k": ("k", int, "number of results"),
    "rerank": ("rerank", bool, "rerank with the VLM by default"),
}


def config_path() -> Path:
    if os.environ.get("RETLLM_CONFIG"):
        return Path(os.environ["RETLLM_CONFIG"]).expanduser()
    return _xdg("XDG_CONFIG_HOME", ".config") / APP / "config.toml"


def load_config(path: Path | None = None) -> dict:
    """The file's settings, checked (an absent file: {}). Raises BadInput naming the file."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadInput(
            f"{path}: cannot read the config file ({exc.strerror})", hint="fix or remove it"
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"{path}: not valid TOML ({exc})", hint="fix or remove the config file") from None
    out = {}
    for key, value in data.items():
        if key not in KEYS:
            raise BadInput(f"{path}: unknown setting {key!r}", hint=f"known settings: {', '.join(KEYS)}")
        _param, kind, what = KEYS[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is int and ok and value < 1:
            ok = False
        if not ok:
            wanted = "positive whole number" if kind is int else kind.__name__
            raise BadInput(
                f"{path}: {key} = {value!r} is not a {wanted}",
                hint=f"{key} is the {what}",
            )
        out[key] = os.path.expanduser(value) if key == "index" else value
    return out


def default_map(commands: dict, settings: dict) -> dict:
    """click's ``default_map`` for each command (and subcommand) taking the configured options."""
    out: dict = {}
    for name, command in commands.items():
        sub = getattr(command, "commands", None)
        if sub:
            nested = default_map(sub, settings)
            if nested:
                out[name] = nested
            continue
        params = {p.name for p in command.params}
        values = {KEYS[k][0]: v for k, v in settings.items() if KEYS[k][0] in params}
        if values:
            out[name] = values
    return out
