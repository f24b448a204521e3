"""Shared test setup.

Every test runs with its own XDG/RETLLM directories so nothing touches a user's files.
Tiny random-weight models are built once per session by the fixture modules below.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["clip_fixtures", "hf_fixtures", "vlm_fixtures", "serve_fixtures"]


def pytest_report_header(config) -> list[str]:
    """The CPU the suite runs on: int8 and llama.cpp numerics differ between AVX2 and VNNI/AMX."""
    from retllm_lite import cpu

    info = cpu.cpu_info()
    lines = [f"cpu: {cpu.summary(info)} (int8 kernels: {info['int8_kernels']})"]
    try:
        import llama_cpp

        lines.append("llama.cpp: " + llama_cpp.llama_print_system_info().decode().strip())
    except Exception as exc:  # llama-cpp-python is an optional extra
        lines.append(f"llama.cpp: not available ({type(exc).__name__})")
    return lines


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for var, sub in [
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_CONFIG_HOME", "config"),
    ]:
        monkeypatch.setenv(var, str(home / sub))
    for var in (
        "RETLLM_DATA_DIR",
        "RETLLM_CACHE_DIR",
        "RETLLM_MODELS_DIR",
        "RETLLM_INDEX",
        "RETLLM_CLIP_MODEL",
        "RETLLM_VLM_MODEL",
        "RETLLM_MMPROJ",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home
