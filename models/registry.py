"""The model registry: the models retllm-lite knows by name, read from ``registry.toml``.

An entry says where a model comes from (repository, revision, file names), its license,
what it needs at run time, and whether its files are used as downloaded (``ready``) or
are the checkpoint ``retllm quantize`` turns into the model. It never holds a checksum or
a size: those are read from the hub at pull time and recorded on disk (``pull.json``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import BadModelFile, ModelNotFound

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KINDS = ("clip", "vlm")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Keys that would put a checksum or size into the registry: refused when loading it.
_FORBIDDEN = {"sha256", "sha1", "etag", "size", "bytes", "checksum"}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str
    ready: bool
    repo: str
    revision: str
    summary: str = ""
    license: str = ""
    license_source: str = ""
    revision_source: str = ""
    confirmed: str = ""
    files: tuple[str, ...] = ()
    optional_files: tuple[str, ...] = ()
    first_of: tuple[tuple[str, ...], ...] = ()
    clip: dict[str, Any] = field(default_factory=dict)
    vlm: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        """True when ``revision`` is a commit (not a branch resolved at pull time)."""
        return bool(COMMIT_RE.match(self.revision))

    @property
    def required_files(self) -> tuple[str, ...]:
        extra = tuple(self.vlm[k] for k in ("model", "mmproj") if self.vlm.get(k))
        return tuple(dict.fromkeys(self.files + extra))

    def select(self, available: Collection[str]) -> list[str]:
        """The files to download, given the repository's file list at the resolved commit."""
        have = set(available)
        missing = [f for f in self.required_files if f not in have]
        chosen = [f for f in self.required_files if f in have]
        for group in self.first_of:
            pick = next((f for f in group if f in have), None)
            if pick is None:
                missing.append(" or ".join(group))
            else:
                chosen.append(pick)
        if missing:
            raise ModelNotFound(
                f"{self.repo}@{self.revision} has no {', '.join(missing)} (needed by model {self.name!r})",
                hint="the repository changed or the registry entry is out of date; "
                "pass local files instead (see 'retllm models list')",
            )
        chosen += [f for f in self.optional_files if f in have and f not in chosen]
        return chosen

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "ready": self.ready,
            "repo": self.repo,
            "revision": self.revision,
            "pinned": self.pinned,
            "summary": self.summary,
            "license": self.license,
        }
        for key in ("clip", "vlm", "quantize"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


def _reject_checksums(name: str, value: Any, where: str = "") -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in _FORBIDDEN:
                raise BadModelFile(
                    f"registry entry {name!r} has '{where}{key}': the registry never holds checksums or "
                    "sizes (they are read from the hub at pull time)"
                )
            _reject_checksums(name, sub, f"{where}{key}.")


def _entry(name: str, raw: dict[str, Any]) -> ModelEntry:
    _reject_checksums(name, raw)
    try:
        entry = ModelEntry(
            name=name,
            kind=raw["kind"],
            ready=bool(raw["ready"]),
            repo=raw["repo"],
            revision=raw["revision"],
            summary=raw.get("summary", ""),
            license=raw.get("license", ""),
            license_source=raw.get("license_source", ""),
            revision_source=raw.get("revision_source", ""),
            confirmed=raw.get("confirmed", ""),
            files=tuple(raw.get("files", ())),
            optional_files=tuple(raw.get("optional_files", ())),
            first_of=tuple(tuple(g) for g in raw.get("first_of", ())),
            clip=dict(raw.get("clip", {})),
            vlm=dict(raw.get("vlm", {})),
            quantize=dict(raw.get("quantize", {})),
        )
    except KeyError as exc:
        raise BadModelFile(f"registry entry {name!r} lacks {exc.args[0]!r}") from None
    problems = []
    if entry.kind not in KINDS:
        problems.append(f"kind must be one of {', '.join(KINDS)}")
    if entry.ready and entry.kind == "clip" and not entry.clip.get("variants"):
        problems.append("a ready CLIP needs clip.variants")
    if entry.ready and entry.kind == "vlm" and not (entry.vlm.get("model") and entry.vlm.get("mmproj")):
        problems.append("a ready VLM needs vlm.model and vlm.mmproj")
    if not entry.ready and not entry.quantize.get("command"):
        problems.append("a model made by 'retllm quantize' needs quantize.command")
    if not entry.required_files and not entry.first_of:
        problems.append("no files")
    if problems:
        raise BadModelFile(f"registry entry {name!r}: {'; '.join(problems)}")
    return entry


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, ModelEntry], dict[str, str]]:
    text = resources.files(__package__).joinpath("registry.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    models = {name: _entry(name, raw) for name, raw in data.get("models", {}).items()}
    defaults = dict(data.get("defaults", {}))
    for kind, name in defaults.items():
        if models.get(name) is None or models[name].kind != kind:
            raise BadModelFile(f"registry default {kind} = {name!r} is not a {kind} entry")
    return models, defaults


def entries() -> dict[str, ModelEntry]:
    return dict(_load()[0])


def find(name: str) -> ModelEntry | None:
    return _load()[0].get(name)


def get(name: str) -> ModelEntry:
    entry = find(name)
    if entry is None:
        raise ModelNotFound(
            f"no model named {name!r} in the registry",
            hint=f"known: {', '.join(entries())}; or pass a local path",
        )
    return entry


def default_name(kind: str) -> str:
    """The registry's default model of a kind ("clip" or "vlm")."""
    return _load()[1][kind]
