"""Which llama.cpp build is loaded, and what it may be asked to do.

``runtime_version`` names the build (llama-cpp-python's version and a hash of the libmtmd
it loaded), part of what keys cached image embeddings.
``use_extra_buffers`` decides llama.cpp's weight repacking for this CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def runtime_version(llama: Any, mtmd: Any) -> str:
    """The llama.cpp build: llama-cpp-python's version and a hash of the libmtmd it loaded."""
    from retllm_lite.hashing import cached_sha256

    version = getattr(llama, "__version__", None) or _package_version()
    lib = getattr(getattr(mtmd, "_libmtmd", None), "_name", None)
    digest = "unknown"
    if lib and Path(lib).is_file():
        digest = cached_sha256(Path(lib))[:16]
    return f"llama-cpp-python {version}, libmtmd {digest}"


def _package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def use_extra_buffers(llama: Any) -> bool:
    """Weight repacking (extra CPU buffer types), except on CPUs with AMX.

    On AMX CPUs llama.cpp repacks quantized weights into an AMX buffer and its
    ``ggml_backend_amx_mul_mat`` segfaults on the first decode (seen here with Q8_0, Q4_0
    and Q4_K_M; ggml-org/llama.cpp#20824). Without extra buffers the plain CPU kernels run.
    """
    info = llama.llama_print_system_info()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "AMX_INT8 = 1" not in text
