"""``retllm models list | pull | verify | remove | path``: the models on this machine."""

from __future__ import annotations

import sys

import click

from .app import Group, cli, progress_enabled
from .output import emit_json, emit_table, output_options

offline_option = click.option(
    "--offline",
    is_flag=True,
    default=None,
    help="Never download (also: RETLLM_OFFLINE=1 or HF_HUB_OFFLINE=1).",
)


def _mb(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e6:,.0f} MB" if n >= 1e7 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


@cli.group("models", cls=Group)
def models_group() -> None:
    """List, download, check and remove models (CLIP encoders and VLM rerankers).

    Models live in $RETLLM_MODELS_DIR (default: the XDG cache dir). On a machine without
    a network, copy a model folder from a machine that ran 'retllm models pull NAME'.
    """


@models_group.command("list")
@output_options()
def list_cmd(output_format):
    """The registry's models and what is on this machine."""
    from ..models import registry, store

    local = {(m.name, m.state): m for m in store.local_models()}
    defaults = {registry.default_name("clip"), registry.default_name("vlm")}
    rows = []
    for name, entry in registry.entries().items():
        here = local.pop((name, "ready"), None) or local.pop((name, "source"), None)
        partial = local.pop((name, "partial"), None)
        state = here.state if here else "partial" if partial else "not downloaded"
        if here and here.state == "source" and store.model_dir(name).is_dir():
            state = "ready"
        rows.append(
            {
                "name": name,
                "kind": entry.kind,
                "default": name in defaults,
                "state": state,
                "made_by": "download" if entry.ready else "retllm quantize",
                "bytes": here.to_dict()["bytes"] if here else None,
                "license": entry.license,
                "repo": entry.repo,
                "revision": entry.revision,
                "path": str(here.path) if here else None,
                "summary": entry.summary,
            }
        )
    for m in local.values():  # folders that are not registry models (e.g. 'quantize --out' here)
        rows.append({**m.to_dict(), "default": False, "made_by": "local", "license": None, "summary": ""})
    if output_format in ("json", "nl"):
        emit_json(rows, output_format)
        return
    for r in rows:
        r["size"] = _mb(r.get("bytes"))
        r["name"] = r["name"] + (" *" if r["default"] else "")
    emit_table(
        rows,
        [
            ("name", "name", "{}"),
            ("kind", "kind", "{}"),
            ("state", "state", "{}"),
            ("size", "size", "{}"),
            ("license", "license", "{}"),
            ("summary", "about (* = default)", "{}"),
        ],
    )


@models_group.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Download again even if the model is here.")
@click.option(
    "--quantize",
    is_flag=True,
    help="For a model made by 'retllm quantize': also run it (needs the export extra).",
)
@offline_option
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@output_options()
def pull_cmd(names, force, quantize, offline, progress, output_format):
    """Download models by NAME (see 'retllm models list'), each file checked against the hub.

    Interrupted downloads resume when the command is run again. Honours HF_ENDPOINT.
    """
    from ..models.pull import pull

    results = []
    for name in names:
        result = pull(
            name,
            offline=offline,
            force=force,
            progress=progress_enabled(progress),
            announce=lambda msg: click.echo(msg, err=True),
            quantize=quantize,
        )
        results.append(result)
        if output_format not in ("json", "nl"):
            verb = "already here" if result["status"] == "present" else f"downloaded {_mb(result['bytes'])}"
            click.echo(f"{result['name']}: {verb} in {result['path']}", err=True)
            if result.get("quantize_command") and not result.get("ready"):
                click.echo(f"make it with: {result['quantize_command']}", err=True)
    if output_format in ("json", "nl"):
        emit_json(results, output_format)


@models_group.command("verify")
@click.argument("names", nargs=-1)
@output_options()
def verify_cmd(names, output_format):
    """Re-hash the files of models NAMES (default: every model here) against their records."""
    from ..errors import ModelNotFound, RetllmError
    from ..models import store

    if names:
        targets = []
        for name in names:
            local = store.local_model(name)
            if local is None:
                raise ModelNotFound(f"no model {name!r} on this machine", hint="see 'retllm models list'")
            targets.append(local)
    else:
        targets = [m for m in store.local_models() if m.state != "partial"]
    rows = []
    for m in targets:
        try:
            rows += [{"name": m.name, "state": m.state, **row} for row in store.verify(m.path)]
        except RetllmError as exc:
            rows.append({"name": m.name, "state": m.state, "file": None, "ok": False, "error": str(exc)})
    bad = [r for r in rows if not r["ok"]]
    if output_format in ("json", "nl"):
        emit_json(rows, output_format)
    elif not rows:
        click.echo("No models to verify.", err=True)
    else:
        for name, state in dict.fromkeys((r["name"], r["state"]) for r in rows):
            mine = [r for r in rows if (r["name"], r["state"]) == (name, state)]
            broken = [r for r in mine if not r["ok"]]
            status = "ok" if not broken else f"{len(broken)} of {len(mine)} files bad"
            label = name if state == "ready" else f"{name} ({state})"
            click.echo(f"{label}: {status} ({len(mine)} files checked)")
            for r in broken:
                click.echo(f"  {r['error']}")
            if broken:
                click.echo(f"  fix: retllm models pull {name} --force")
    if bad:
        sys.exit(1)


@models_group.command("remove")
@click.argument("names", nargs=-1, required=True)
@output_options()
def remove_cmd(names, output_format):
    """Delete models NAMES (and their downloaded sources and partial downloads)."""
    from ..models import store

    rows = [{"name": name, "removed": [str(p) for p in store.remove(name)]} for name in names]
    if output_format in ("json", "nl"):
        emit_json(rows, output_format)
    else:
        for r in rows:
            click.echo(f"removed {', '.join(r['removed'])}", err=True)


@models_group.command("path")
@click.argument("name")
@output_options()
def path_cmd(name, output_format):
    """Print the folder of model NAME (for --clip-model / --vlm-model, or to copy it)."""
    from ..errors import ModelNotFound
    from ..models import registry, store

    local = store.local_model(name)
    if local is None:
        entry = registry.find(name)
        raise ModelNotFound(
            f"model {name!r} is not on this machine",
            hint=store.missing_hint(name, entry.kind) if entry else "see 'retllm models list'",
        )
    row = {"name": name, "path": str(local.path), "state": local.state, "kind": local.kind}
    if local.kind == "vlm" and local.state == "ready":
        model, mmproj = store.resolve_vlm(str(local.path))
        row.update(model=str(model), mmproj=str(mmproj))
    if output_format in ("json", "nl"):
        emit_json(row)
    else:
        click.echo(row["path"])
