"""The ``retllm`` command: a thin layer over the library (parse, call, print).

Each command lives in its own module and registers itself on the ``cli`` group.
Library errors (``RetllmError``) become one-line messages; set RETLLM_DEBUG=1 for a traceback.
"""

from __future__ import annotations

from . import (  # noqa: F401  (register commands)
    doctor_cmd,
    eval_cmd,
    index_cmd,
    info_cmd,
    models_cmd,
    prepare_cmd,
    quantize_cmd,
    search_cmd,
    serve_cmd,
)
from .app import cli

main = cli

__all__ = ["cli", "main"]
