"""``retllm serve``: the local web app over an index (see docs/serve.md)."""

from __future__ import annotations

import threading
from pathlib import Path

import click

from ..errors import require
from .app import (
    announce,
    cli,
    clip_option,
    index_option,
    mmproj_option,
    offline_option,
    variant_option,
    vlm_model_option,
)
from .runtime_options import vlm_runtime_options


@cli.command("serve")
@index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port."
)
@click.option(
    "--token",
    envvar="RETLLM_SERVE_TOKEN",
    help="Secret every request must carry (required off loopback; generated and printed when missing).",
)
@clip_option
@variant_option
@vlm_model_option
@mmproj_option
@offline_option
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(1, 200),
    default=30,
    show_default=True,
    help="Results per search (the page can change it).",
)
@click.option("--rerank/--no-rerank", "rerank", default=False, help="Start with the rerank switch on.")
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0.1),
    default=20.0,
    show_default=True,
    help="Largest query image accepted.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@click.option(
    "--watch",
    "watch_folders",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Keep this photo FOLDER indexed while serving, as 'retllm index FOLDER --watch' (repeatable).",
)
@vlm_runtime_options
def serve_cmd(
    index_path,
    host,
    port,
    token,
    clip_model,
    variant,
    vlm_model,
    mmproj,
    offline,
    k,
    rerank,
    max_upload_mb,
    open_browser,
    watch_folders,
    vlm_runtime,
):
    """Search and browse the index in a web browser (a local app; JSON API under /api/)."""
    require("uvicorn", "serve", "retllm serve")
    require("starlette", "serve", "retllm serve")
    require("python_multipart", "serve", "retllm serve")
    from ..serve import ServedIndex, ServeSettings, bind_policy, bind_socket, create_app, run, url_for

    policy = bind_policy(host, token)
    if clip_model is not None:
        from ..models.pull import ensure_clip

        clip_model = ensure_clip(clip_model, offline=offline, announce=announce)
    factory, vlm_name, reason = _scorer_factory(vlm_model, mmproj, offline, vlm_runtime)
    settings = ServeSettings(
        index_path=index_path,
        clip_model=clip_model,
        variant=variant,
        scorer_factory=factory,
        vlm_name=vlm_name,
        no_rerank_reason=reason,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        default_k=k,
        rerank_default=rerank,
    )
    follower = _Follower(watch_folders, index_path, clip_model, variant, offline) if watch_folders else None
    served = ServedIndex(settings)
    if follower is not None:
        follower.start()
    try:
        sock = bind_socket(host, port)
        bound = sock.getsockname()[1]
        url = url_for(policy, bound)
        click.echo(f"retllm serve: {served.settings_summary()}")
        if policy.generated:
            click.echo(f"token (generated; every request needs it): {policy.token}")
        click.echo(f"open {url}", nl=True)
        click.echo("Ctrl-C stops the server.", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        run(create_app(served, policy, {"port": bound}), sock)
    finally:
        if follower is not None:
            follower.close()
        served.close()


class _Follower:
    """``--watch``: the folders kept indexed by ``index/watch.py`` in a thread of its own.

    A new index is built in the foreground first (there is nothing to serve before); an
    existing one is served at once while the watcher brings it up to date. SQLite handles
    belong to their thread, so the watcher opens its own writable index there.
    """

    def __init__(self, folders, index_path, clip_model, variant, offline):
        from ..index.backend import is_lance, open_index
        from ..index.indexer import Indexer
        from .index_cmd import _built_with, _print_report, encoder_for_index

        if is_lance(index_path):
            raise click.UsageError("--watch follows photo folders into a local index, not lance:")
        self.folders = [str(f) for f in folders]
        self.index_path = index_path
        self.encoder = encoder_for_index(index_path, clip_model, variant, offline, False)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.print_report = _print_report
        if _built_with(index_path) is None:
            click.echo(f"Indexing {', '.join(self.folders)} before serving...", err=True)
            with open_index(index_path, writable=True) as idx:
                _print_report(Indexer(idx, self.encoder).index_folders(self.folders), idx.location)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="retllm-watch", daemon=True)
        self.thread.start()
        click.echo(f"watching {', '.join(self.folders)}", err=True)

    def _run(self) -> None:
        from ..errors import RetllmError
        from ..index.backend import open_index
        from ..index.indexer import Indexer
        from ..index.watch import FolderWatcher
        from .index_cmd import report_changed

        try:
            with open_index(self.index_path, writable=True, wait=5.0) as idx:

                def on_report(report) -> None:
                    if report_changed(report):
                        self.print_report(report, idx.location)

                FolderWatcher(Indexer(idx, self.encoder), self.folders, on_report, stop=self.stop).run()
        except RetllmError as exc:  # e.g. another indexer holds the index: serving goes on
            click.echo(f"retllm serve --watch stopped: {exc}", err=True)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=120)


def _scorer_factory(vlm_model, mmproj, offline, runtime):
    """(factory building the Scorer, VLM name, why reranking is off)."""
    from ..errors import RetllmError
    from ..models.pull import ensure_vlm

    explicit = vlm_model is not None
    try:
        model, proj = ensure_vlm(vlm_model, mmproj, offline=offline or not explicit, announce=announce)
    except RetllmError as exc:
        if explicit:
            raise
        return None, None, f"no VLM on disk ({exc.message}; start with --vlm-model)"

    def factory():
        from ..rerank.scorer import Scorer

        return Scorer.from_gguf(model, proj, rule="paper", embedding_cache=True, **runtime.scorer_kwargs())

    return factory, str(vlm_model or model.parent.name), ""
