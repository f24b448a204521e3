"""Route llama.cpp's and mtmd's C-level logging: silent by default, stderr when verbose.

The last few warning/error lines are kept either way, so a failed load can say why.
llama.cpp's log callback is process-wide: the most recent ``install`` wins.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from typing import Any

_GGML_LOG_LEVEL_WARN = 2
_GGML_LOG_LEVEL_ERROR = 3
_GGML_LOG_LEVEL_CONT = 5

_recent: deque[str] = deque(maxlen=20)
_state = {"verbose": False, "last_level": 0}
_callback: Any = None  # keep the ctypes callback alive for as long as llama.cpp may call it


def _on_log(level: int, text: bytes | None, _user_data: Any) -> None:
    msg = (text or b"").decode("utf-8", errors="replace")
    if level == _GGML_LOG_LEVEL_CONT:
        level = _state["last_level"]
    _state["last_level"] = level
    if level in (_GGML_LOG_LEVEL_WARN, _GGML_LOG_LEVEL_ERROR) and msg.strip():
        _recent.append(msg.strip())
    if _state["verbose"]:
        sys.stderr.write(msg)


def install(verbose: bool = False) -> None:
    """Point llama.cpp, mtmd and mtmd-helper logging at our callback."""
    global _callback
    import llama_cpp
    from llama_cpp import mtmd_cpp

    _state["verbose"] = verbose
    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_on_log)
    null = ctypes.c_void_p(0)
    llama_cpp.llama_log_set(_callback, null)
    mtmd_cpp.mtmd_log_set(_callback, null)
    mtmd_cpp.mtmd_helper_log_set(_callback, null)


def clear() -> None:
    _recent.clear()


def last_error() -> str:
    """The most recent warning/error line llama.cpp logged, or a generic note."""
    return _recent[-1] if _recent else "no details were logged"
