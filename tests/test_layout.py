"""House order (#16): no import circles between the package's parts, and no oversized module.

The imports are read statically (ast) from the source tree as it is installed:
``retllm_lite/`` is the package, ``models/`` and ``quantize/`` install inside it as
``retllm_lite.models`` and ``retllm_lite.quantize`` (pyproject's ``package-dir``), and
``cli.py`` is a checkout launcher, a lone module. Every import statement counts, at module
level or inside a function or an ``if TYPE_CHECKING:`` block: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import sys
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "retllm_lite"
MAX_LINES = 600

# The data flow is encode -> index -> rerank -> pipeline -> cli; nothing imports back up it.
# Each part, and the parts it must never import (directly or through a lazy import).
MUST_NOT_IMPORT = {
    "encode": {"models", "quantize", "index", "rerank", "pipeline", "eval", "view", "serve", "cli"},
    "index": {"models", "quantize", "rerank", "pipeline", "eval", "view", "serve", "cli"},
    "rerank": {"models", "quantize", "index", "pipeline", "eval", "view", "serve", "cli"},
    "pipeline": {"quantize", "eval", "view", "serve", "cli"},
    "view": {"models", "quantize", "eval", "serve", "cli"},
    "eval": {"view", "serve", "cli"},
    "serve": {"eval", "cli"},
    "models": {"index", "pipeline", "eval", "view", "serve", "cli"},
    "quantize": {"models", "index", "pipeline", "eval", "view", "serve", "cli"},
}
# The shared basics import nothing but each other.
BASICS = {"errors", "paths", "hashing"}
# The pixel pipeline (encode.base.PixelEncoder) is for the batched paths of these parts only.
PIXEL_HOOK = {"embed_pixels", "preprocess_config"}
PIXEL_HOOK_USERS = {"encode", "index", "eval"}


def source_modules() -> dict[str, tuple[Path, bool]]:
    """Installed module name -> (source file, is a package's __init__), for the whole tree."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    modules: dict[str, tuple[Path, bool]] = {}
    for pkg, folder in config["package-dir"].items():
        folder = ROOT / folder
        assert (folder / "__init__.py").is_file(), f"{folder} is installed as {pkg} but is not a package"
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            name = ".".join([pkg, *(parts[:-1] if is_pkg else parts)])
            modules.setdefault(name, (path, is_pkg))
    modules["cli.py"] = (ROOT / "cli.py", False)  # the launcher; not installed
    return modules


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_graph(modules: Mapping[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of this tree it imports."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_pkg, node)
                if base is None:
                    continue
                for alias in node.names:  # "from pkg import submodule" imports the submodule
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def part(module: str) -> str:
    """The part of the package a module belongs to: ``retllm_lite.encode.base`` -> ``encode``."""
    if module == "cli.py":
        return module
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else PACKAGE


def part_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for src, targets in graph.items():
        parts.setdefault(part(src), set()).update(part(t) for t in targets if part(t) != part(src))
    return parts


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(source_modules())


def test_the_walk_reads_the_installed_layout(graph):
    """What the other tests rely on: every part found, and edges known to exist seen."""
    parts = part_graph(graph)
    assert {
        "encode",
        "index",
        "rerank",
        "pipeline",
        "eval",
        "view",
        "serve",
        "cli",
        "models",
        "quantize",
    } <= set(parts)
    assert "retllm_lite.models.store" in graph and "retllm_lite.quantize.hf_layout" in graph
    assert "retllm_lite.index.backend" in graph["retllm_lite.pipeline"]
    assert "retllm_lite.view.thumbnails" in graph["retllm_lite.serve.files"]  # a relative import
    assert "retllm_lite.cli" in graph["cli.py"]
    assert {"encode", "index", "rerank"} <= parts["pipeline"]


def test_every_package_is_installed(graph):
    """A folder of modules missing from pyproject's ``packages`` would not be installed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = {name for name, (path, is_pkg) in source_modules().items() if is_pkg}
    assert packages == set(config["packages"])


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_between_parts(graph):
    cycle = find_cycle(part_graph(graph))
    assert cycle is None, "import circle between parts: " + " -> ".join(cycle or [])


def test_no_import_circle_between_modules(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle between modules: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("source", sorted(MUST_NOT_IMPORT))
def test_nothing_imports_back_up_the_data_flow(graph, source):
    wrong = sorted(
        f"{src} imports {dst}"
        for src, targets in graph.items()
        if part(src) == source
        for dst in targets
        if part(dst) in MUST_NOT_IMPORT[source]
    )
    assert not wrong, wrong


def test_shared_basics_import_only_each_other(graph):
    parts = part_graph(graph)
    assert set(parts) >= BASICS
    wrong = {basic: sorted(parts[basic] - BASICS) for basic in BASICS if parts[basic] - BASICS}
    assert not wrong, wrong


def test_no_module_is_over_600_lines():
    """Python files of the package, the launcher, the benchmarks and the tests."""
    files = [ROOT / "cli.py"]
    for folder in ("retllm_lite", "models", "quantize", "benchmarks", "tests"):
        files += (ROOT / folder).rglob("*.py")
    assert len(files) > 100
    long = {
        str(f.relative_to(ROOT)): n
        for f in files
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"over {MAX_LINES} lines (split along a seam): {long}"


def protocol_members(proto: type) -> set[str]:
    names: set[str] = set()
    for cls in proto.__mro__:
        if cls not in (object, typing.Protocol, typing.Generic):
            names |= {n for n in vars(cls) if not n.startswith("_")}
            names |= set(vars(cls).get("__annotations__", {}))
    return names


def test_the_encoder_protocol_is_images_or_texts_in_unit_vectors_out():
    from retllm_lite.encode import PixelEncoder
    from retllm_lite.encode.base import Encoder
    from retllm_lite.encode.onnx_clip import OnnxClipEncoder

    assert protocol_members(Encoder) == {"info", "embed_images", "embed_texts"}
    hook = protocol_members(PixelEncoder) - protocol_members(Encoder)
    assert hook == {"preprocess_config", "load_image", "preprocess", "embed_pixels"}
    assert all(callable(getattr(OnnxClipEncoder, m)) for m in hook - {"preprocess_config"})


def test_only_the_batched_paths_use_the_pixel_hook():
    users = set()
    for name, (path, _is_pkg) in source_modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Attribute) and n.attr in PIXEL_HOOK for n in ast.walk(tree)):
            users.add(name)
    assert "retllm_lite.index.file_load" in users  # the indexer's batched path
    wrong = sorted(u for u in users if part(u) not in PIXEL_HOOK_USERS)
    assert not wrong, wrong


def test_paths_readme_documented_before_the_move_still_import():
    """``retllm_lite.gallery`` and ``retllm_lite.preview`` are the view/ modules' names."""
    from retllm_lite import gallery, preview
    from retllm_lite.view import gallery as view_gallery
    from retllm_lite.view import preview as view_preview

    for old, new in ((gallery, view_gallery), (preview, view_preview)):
        assert old.__all__ and all(getattr(old, n) is getattr(new, n) for n in old.__all__)
