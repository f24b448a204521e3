"""``retllm doctor``: what this machine has, what is missing, and what to do about it.

``diagnose()`` returns one dict: versions of the runtime pieces, the CPU features that
decide speed, the models on disk and whether their files check out, the index, and a list
of problems, each with the command or step that fixes it.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__, hub
from .cpu import cpu_info
from .errors import RetllmError
from .paths import cache_dir, default_index_dir, models_dir

PACKAGES = [
    ("onnxruntime", "core"),
    ("numpy", "core"),
    ("pillow", "core"),
    ("hnswlib", "core"),
    ("tokenizers", "core"),
    ("huggingface_hub", "core"),
    ("llama_cpp_python", "rerank"),
    ("torch", "export"),
    ("open_clip_torch", "export"),
]


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "retllm-lite": __version__}
    for dist, _extra in PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def clip_int8_info(model_dir: Path, here: dict[str, Any], problems: list[dict], label: str) -> dict | None:
    """What each tower of a CLIP model's int8 variant runs, and a note when this CPU differs.

    int8 settings are chosen by parity measured on the exporting CPU; a CPU with other int8
    kernels (VNNI/AMX vs plain AVX2) rounds differently, so that choice is not re-checked here.
    """
    from .encode.manifest import ClipManifest, int8_summary

    try:
        data = ClipManifest.load(model_dir).data
    except RetllmError:  # not a CLIP model directory: nothing to say here
        return None
    cpu = (data.get("quantization") or {}).get("cpu") or {}
    info = {
        "default_variant": data.get("default_variant"),
        "towers": int8_summary(data),
        "chosen_on": cpu or None,
    }
    if (
        cpu
        and here.get("int8_kernels") not in (None, "unknown")
        and cpu.get("int8_kernels") != here["int8_kernels"]
    ):
        problems.append(
            {
                "level": "note",
                "problem": f"{label}: int8 settings were chosen on a CPU with {cpu.get('int8_kernels')} "
                f"int8 kernels; this one has {here['int8_kernels']}, which rounds differently",
                "fix": "re-export the model on this machine to re-check int8 parity here "
                "(retllm quantize clip ...), or use --variant fp32",
            }
        )
    return info


def _model_rows(problems: list[dict], cpu: dict[str, Any]) -> list[dict[str, Any]]:
    from .models import pull as pull_mod
    from .models import registry, store

    rows = []
    for m in store.local_models():
        row = m.to_dict()
        if m.state == "partial":
            row["verified"] = None
            problems.append(
                {
                    "level": "warning",
                    "problem": f"an interrupted download of {m.name} is in {m.path}",
                    "fix": f"retllm models pull {m.name}   (it resumes; or: retllm models remove {m.name})",
                }
            )
        else:
            try:
                bad = [r for r in store.verify(m.path, force=False) if not r["ok"]]
                row["verified"] = not bad
                row["errors"] = [r["error"] for r in bad]
            except RetllmError as exc:
                row["verified"], bad = False, [exc]
                row["errors"] = [exc.message]
            if bad:
                fix = f"retllm models pull {m.name} --force" if m.entry else "re-export it"
                problems.append(
                    {"level": "error", "problem": f"model {m.name}: {row['errors'][0]}", "fix": fix}
                )
            if m.state == "source" and m.entry and not store.model_dir(m.name).is_dir():
                problems.append(
                    {
                        "level": "warning",
                        "problem": f"{m.name} is downloaded but not made yet",
                        "fix": store.shell(store.quantize_command(m.entry)),
                    }
                )
        if m.kind == "clip" and m.state == "ready":
            row["int8"] = clip_int8_info(m.path, cpu, problems, f"model {m.name}")
        rows.append(row)
    for kind in ("clip", "vlm"):
        entry = registry.get(registry.default_name(kind))
        if not store.is_present(entry):
            when = "the first 'retllm index'" if kind == "clip" else "the first 'retllm search --rerank'"
            label = "CLIP model" if kind == "clip" else "VLM"
            problems.append(
                {
                    "level": "note",
                    "problem": f"the default {label} {entry.name} is not downloaded "
                    f"({when} downloads it{', but downloads are off' if hub.offline_requested() else ''})",
                    "fix": f"retllm models pull {entry.name}"
                    + (
                        f"   (offline: {pull_mod.offline_error(entry, '').hint})"
                        if hub.offline_requested()
                        else ""
                    ),
                }
            )
    return rows


def _index_info(index_path, problems: list[dict], cpu: dict[str, Any]) -> dict[str, Any] | None:
    from .errors import IndexNotFound
    from .index.backend import open_index

    try:
        with open_index(index_path) as idx:
            stats = idx.stats()
    except IndexNotFound:
        where = Path(index_path).expanduser() if index_path else default_index_dir()
        problems.append({"level": "note", "problem": f"no index at {where}", "fix": "retllm index FOLDER"})
        return None
    except RetllmError as exc:
        problems.append(
            {"level": "error", "problem": str(exc), "fix": "rebuild it: retllm index FOLDER --index NEW"}
        )
        return None
    enc = stats.get("encoder") or {}
    location = enc.get("location")
    if location and Path(location).is_dir() and Path(location).parent != models_dir():
        stats["clip_int8"] = clip_int8_info(Path(location), cpu, problems, f"the index's model {location}")
    if location and not Path(location).is_dir():
        name = Path(location).name
        from .models import registry

        fix = (
            f"retllm models pull {name}"
            if Path(location).parent == models_dir() and registry.find(name)
            else "pass --clip-model DIR pointing at the model that built it"
        )
        problems.append(
            {"level": "error", "problem": f"the model that built the index is gone ({location})", "fix": fix}
        )
    return stats


def diagnose(index_path: str | os.PathLike | None = None) -> dict[str, Any]:
    problems: list[dict] = []
    vers = versions()
    cpu = cpu_info()
    if vers.get("llama_cpp_python") is None:
        problems.append(
            {
                "level": "warning",
                "problem": "llama-cpp-python is not installed: reranking (--rerank) is unavailable",
                "fix": "pip install 'retllm-lite[rerank]'   (builds llama.cpp: about 15 minutes on 2 cores)",
            }
        )
    if vers.get("tokenizers") is None:
        problems.append(
            {
                "level": "error",
                "problem": "the 'tokenizers' package is missing: Hugging Face CLIP models "
                "(the default) cannot run",
                "fix": "pip install tokenizers",
            }
        )
    if cpu["machine"].lower() in ("x86_64", "amd64") and cpu["features"] and not cpu["features"].get("avx2"):
        problems.append(
            {
                "level": "warning",
                "problem": "this CPU has no AVX2: onnxruntime and llama.cpp take their slow paths",
                "fix": "expect several times slower indexing and reranking; prefer the int8 CLIP "
                "variant and a small VLM (smolvlm-500m)",
            }
        )
    models = _model_rows(problems, cpu)
    index = _index_info(index_path, problems, cpu)
    return {
        "versions": vers,
        "python_executable": sys.executable,
        "cpu": cpu,
        "paths": {"models": str(models_dir()), "cache": str(cache_dir())},
        "hub": {"endpoint": hub.endpoint(), "offline": hub.offline_requested()},
        "models": models,
        "index": index,
        "problems": problems,
    }
