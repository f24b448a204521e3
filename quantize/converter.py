"""llama.cpp's own HF -> GGUF converter, matched to the installed llama-cpp-python.

A converter from another llama.cpp commit may write files this runtime cannot read, so the
converter is taken from the llama-cpp-python sdist of exactly the installed version: its
``vendor/llama.cpp`` holds ``convert_hf_to_gguf.py``, the ``conversion`` package it imports,
``gguf-py`` and the chat templates, at the commit the bindings were built from.

Where it comes from, first match wins:

1. ``llama_cpp_dir`` argument, else ``$RETLLM_LLAMA_CPP_DIR``: an existing llama.cpp checkout.
2. ``<cache>/converters/llama-cpp-python-<version>/`` extracted earlier.
3. the sdist: ``sdist`` argument or ``$RETLLM_LLAMA_CPP_SDIST`` (a local
   ``llama_cpp_python-<version>.tar.gz``), else ``pip download`` from the package index.
   Only the converter files are extracted, into a temporary directory renamed into place.

The converter runs in a subprocess (it needs torch, transformers, sentencepiece,
safetensors: the ``export`` extra) with ``PYTHONPATH`` pointing at the matching ``gguf-py``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retllm_lite.errors import BadInput, MissingDependency
from retllm_lite.paths import cache_dir

ENV_DIR = "RETLLM_LLAMA_CPP_DIR"
ENV_SDIST = "RETLLM_LLAMA_CPP_SDIST"
SCRIPT = "convert_hf_to_gguf.py"
MARKER = "converter.json"
# Parts of vendor/llama.cpp the converter reads (its imports, gguf-py, chat templates).
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/", "LICENSE")
_CONVERT_TIMEOUT_S = 1800
_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_HINT = (
    f"connect to the package index once, or set {ENV_DIR} to a llama.cpp checkout "
    f"(or {ENV_SDIST} to a llama_cpp_python sdist) of the installed version"
)


@dataclass(frozen=True)
class Converter:
    """A usable converter tree: ``root/convert_hf_to_gguf.py`` and ``root/gguf-py``."""

    root: Path
    version: str  # human-readable origin, recorded in manifests
    llama_cpp_commit: str | None = None

    @property
    def script(self) -> Path:
        return self.root / SCRIPT

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    def run(
        self,
        hf_dir: str | Path,
        outfile: str | Path,
        outtype: str,
        *,
        mmproj: bool = False,
        python: str | None = None,
        timeout: float = _CONVERT_TIMEOUT_S,
    ) -> Path:
        """Convert ``hf_dir`` to one GGUF file (the text model, or its projector with mmproj)."""
        if outtype not in _OUTTYPES:
            raise BadInput(f"converter outtype must be one of {', '.join(_OUTTYPES)}, not {outtype}")
        hf = Path(hf_dir).resolve()
        if not (hf / "config.json").is_file():
            raise BadInput(f"{hf} is not a Hugging Face checkout (no config.json)")
        for module in ("torch", "transformers", "sentencepiece", "safetensors"):
            if python is None and importlib.util.find_spec(module) is None:
                raise MissingDependency(
                    f"converting to GGUF needs the Python package '{module}'",
                    hint="install it with: pip install 'retllm-lite[export]'",
                )
        out = Path(outfile).resolve()
        cmd = [
            python or sys.executable,
            str(self.script),
            str(hf),
            "--outfile",
            str(out),
            "--outtype",
            outtype,
        ]
        if mmproj:
            cmd.append("--mmproj")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.gguf_py), *filter(None, [env.get("PYTHONPATH")])])
        env.pop("NO_LOCAL_GGUF", None)
        env.setdefault("HF_HUB_OFFLINE", "1")
        try:
            proc = subprocess.run(
                cmd, env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BadInput(f"converting {hf} timed out after {timeout:.0f} s") from exc
        if proc.returncode != 0 or not out.is_file():
            what = "projector (mmproj)" if mmproj else "text model"
            raise BadInput(
                f"llama.cpp's converter failed on the {what} of {hf}: "
                f"{_last_error_line(proc.stderr or proc.stdout)}"
            )
        return out


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "exception" in ln.lower():
            return ln
    return lines[-1] if lines else "no output"


def installed_llama_cpp_python() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise MissingDependency(
            "converting to GGUF needs llama-cpp-python (the converter must match it)",
            hint="install it with: pip install 'retllm-lite[rerank]'",
        ) from exc


def get_converter(
    llama_cpp_dir: str | Path | None = None,
    *,
    sdist: str | Path | None = None,
    version: str | None = None,
    download: bool = True,
    root: str | Path | None = None,
) -> Converter:
    """Find or fetch the converter matched to the installed llama-cpp-python (see module doc).

    ``root`` is where extracted converters live (default ``<cache>/converters``).
    """
    explicit = llama_cpp_dir or os.environ.get(ENV_DIR)
    if explicit:
        return _from_checkout(Path(explicit).expanduser())
    version = version or installed_llama_cpp_python()
    base = Path(root) if root is not None else cache_dir() / "converters"
    target = base / f"llama-cpp-python-{version}"
    cached = _from_cache(target)
    if cached is not None:
        return cached
    sdist = sdist or os.environ.get(ENV_SDIST)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        if sdist:
            archive = Path(sdist).expanduser()
            if not archive.is_file():
                raise MissingDependency(f"llama-cpp-python sdist not found: {archive}", hint=_HINT)
        elif download:
            archive = _pip_download(version, Path(tmp))
        else:
            raise MissingDependency(
                f"llama.cpp's converter for llama-cpp-python {version} is not in {target}",
                hint=_HINT,
            )
        _extract(archive, version, target, Path(tmp))
    found = _from_cache(target)
    if found is None:
        raise MissingDependency(f"could not set up the converter in {target}", hint=_HINT)
    return found


def _from_checkout(root: Path) -> Converter:
    if not (root / SCRIPT).is_file() or not (root / "gguf-py" / "gguf").is_dir():
        raise MissingDependency(
            f"{root} is not a llama.cpp checkout (needs {SCRIPT} and gguf-py/)",
            hint=f"point {ENV_DIR} at the top of a llama.cpp source tree",
        )
    commit = _git_head(root)
    label = f"llama.cpp checkout {root}" + (f" @ {commit[:12]}" if commit else "")
    return Converter(root=root, version=label, llama_cpp_commit=commit)


def _git_head(root: Path) -> str | None:
    git = root / ".git"
    if git.is_file():  # a submodule: "gitdir: ../.git/modules/..."
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            git = (root / text.split(":", 1)[1].strip()).resolve()
    head = git / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text().strip()
    if ref.startswith("ref:"):
        ref_file = git / ref.split(":", 1)[1].strip()
        return ref_file.read_text().strip() if ref_file.is_file() else None
    return ref or None


def _from_cache(target: Path) -> Converter | None:
    marker = target / MARKER
    if not marker.is_file() or not (target / SCRIPT).is_file():
        return None
    info = json.loads(marker.read_text())
    return Converter(root=target, version=info["version"], llama_cpp_commit=info.get("commit"))


def _pip_download(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"llama-cpp-python=={version}",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingDependency(
            f"cannot download the llama-cpp-python {version} sdist for its converter ({exc})",
            hint=_HINT,
        ) from exc
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise MissingDependency(
            f"cannot download the llama-cpp-python {version} sdist for its converter: "
            f"{_last_error_line(proc.stderr or proc.stdout)}",
            hint=_HINT,
        )
    return found[0]


def _extract(archive: Path, version: str, target: Path, tmp: Path) -> None:
    stage = tmp / "converter"
    stage.mkdir()
    commit = None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            top = f"llama_cpp_python-{version}/"
            vendor = top + "vendor/llama.cpp/"
            members = []
            for m in tar:
                if m.name == top + ".git/modules/vendor/llama.cpp/HEAD" and m.isfile():
                    fh = tar.extractfile(m)
                    commit = fh.read().decode().strip() if fh else None
                    continue
                if not m.name.startswith(vendor) or not (m.isfile() or m.isdir()):
                    continue
                rel = m.name[len(vendor) :]
                if rel.startswith(_KEEP) and ".." not in Path(rel).parts:
                    m.name = rel
                    members.append(m)
            if not any(m.name == SCRIPT for m in members):
                raise MissingDependency(
                    f"{archive.name} has no vendor/llama.cpp/{SCRIPT} (is it llama-cpp-python {version}?)",
                    hint=_HINT,
                )
            tar.extractall(stage, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MissingDependency(f"cannot read {archive}: {exc}", hint=_HINT) from exc
    gguf_version = _gguf_py_version(stage / "gguf-py" / "pyproject.toml")
    label = (
        f"llama.cpp {commit[:12] if commit else 'unknown commit'} "
        f"(llama-cpp-python {version} sdist, gguf-py {gguf_version})"
    )
    (stage / MARKER).write_text(
        json.dumps(
            {"version": label, "commit": commit, "llama_cpp_python": version, "gguf_py": gguf_version},
            indent=2,
        )
        + "\n"
    )
    try:
        os.replace(stage, target)
    except OSError:
        # Another process put a complete converter there first: keep theirs.
        if _from_cache(target) is None:
            raise
        shutil.rmtree(stage, ignore_errors=True)


def _gguf_py_version(pyproject: Path) -> str:
    if pyproject.is_file():
        for line in pyproject.read_text().splitlines():
            if line.strip().startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
    return "unknown"
