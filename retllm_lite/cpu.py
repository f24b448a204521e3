"""The CPU features that decide onnxruntime's and llama.cpp's kernels (and so speed and rounding).

onnxruntime (MLAS) and llama.cpp pick their kernels from these at run time or build time:
int8 matrix products use VNNI (``avx512_vnni``/``avx_vnni``) or AMX where present, and
plain AVX2 otherwise, which rounds differently and needs ``reduce_range`` for signed
int8 weights. The exporter records this next to the int8 settings it chose; ``retllm
doctor`` and the benchmarks print it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

X86_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "sve2")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, cores and the SIMD features that decide onnxruntime / llama.cpp speed."""
    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count(), "model": None}
    flags: set[str] = set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model") and info["model"] is None:
            info["model"] = value.strip()
    wanted = ARM_FLAGS if info["machine"].lower() in ("aarch64", "arm64") else X86_FLAGS
    info["features"] = {f: f in flags for f in wanted} if flags else {}
    info["vnni"] = bool(flags & {"avx512_vnni", "avx_vnni"}) if flags else None
    info["int8_kernels"] = int8_kernels(info)
    return info


def physical_cores(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """Cores this process may use, counting SMT siblings once (llama.cpp's best thread count).

    Distinct (physical id, core id) pairs of the CPUs in this process's affinity mask; where
    /proc/cpuinfo does not say (other systems, some VMs), the usable logical CPU count.
    """
    try:
        usable = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = set(range(os.cpu_count() or 1))
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return max(1, len(usable))
    cores: set[tuple[str, str]] = set()
    proc: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not key:
            if "processor" in proc and "core id" in proc and int(proc["processor"]) in usable:
                cores.add((proc.get("physical id", "0"), proc["core id"]))
            proc = {}
        else:
            proc[key] = value
    return max(1, len(cores) if cores else len(usable))


def int8_kernels(info: dict[str, Any]) -> str:
    """The int8 GEMM family this CPU gets: 'amx', 'vnni', 'avx2', 'neon-dot', ... or 'unknown'."""
    f = info.get("features") or {}
    if not f:
        return "unknown"
    if info.get("machine", "").lower() in ("aarch64", "arm64"):
        return "i8mm" if f.get("i8mm") else "neon-dot" if f.get("asimddp") else "neon"
    if f.get("amx_int8"):
        return "amx"
    if info.get("vnni"):
        return "vnni"
    return "avx2" if f.get("avx2") else "sse"


def summary(info: dict[str, Any] | None = None) -> str:
    """One line: model, cores and the features that are present ('AMD EPYC, 2 cores: avx2 fma ...')."""
    info = info or cpu_info()
    on = " ".join(k for k, v in (info.get("features") or {}).items() if v) or "features unknown"
    return f"{info.get('model') or info.get('machine')}, {info.get('cores')} cores: {on}"
