"""``retllm serve``: the local web app over an index (see docs/serve.md)."""

from __future__ import annotations

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
    served = ServedIndex(settings)
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
        served.close()


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
