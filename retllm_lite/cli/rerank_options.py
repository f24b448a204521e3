"""The fine-stage options of ``retllm search`` (``--rerank`` and friends).

``rerank_options`` adds them (and the VLM runtime options, ``runtime_options``) to a
command and hands it one ``rerank`` argument: None without ``--rerank``, else a
``RerankRequest`` that loads the VLM when asked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..pipeline import DEFAULT_RERANK_K, RerankOptions
from .app import gate_signal_option, mmproj_option, rule_option, vlm_model_option
from .runtime_options import VlmRuntime, vlm_runtime_options

GATE_DEFAULT = 0.75


def gated_mode(enhance: str, gate: float | None, signal: str | None) -> str:
    """``--enhance`` with ``--gate`` / ``--gate-signal`` folded in; they need gated enhancement."""
    if enhance != "gated":
        given = [n for n, v in (("--gate", gate), ("--gate-signal", signal)) if v is not None]
        if given:
            raise click.UsageError(f"{' and '.join(given)} only apply to --enhance gated (not {enhance})")
        return enhance
    return f"gated:{GATE_DEFAULT if gate is None else gate}" + (f":{signal}" if signal else "")


@dataclass
class RerankRequest:
    options: RerankOptions
    vlm_model: str | None
    mmproj: str | None
    prompt: str | None
    explain: bool
    runtime: VlmRuntime = field(default_factory=VlmRuntime)

    def scorer(self, offline: bool, announce: Callable[[str], None]):
        """Resolve (pulling if needed and allowed) the VLM and build the Scorer."""
        from ..models.pull import ensure_vlm
        from ..rerank.scorer import Enhance, Scorer

        model, mmproj = ensure_vlm(self.vlm_model, self.mmproj, offline=offline, announce=announce)
        kwargs: dict = {}
        exit_layers = Enhance.parse(self.options.enhance).exit_layers
        if exit_layers is not None:  # the paper's trigger: capture those layers' outputs
            kwargs["exit_layers"] = exit_layers
        if self.prompt is not None:
            from ..rerank.prompts import PromptTemplate

            kwargs["templates"] = PromptTemplate(self.prompt)
        scorer = Scorer.from_gguf(
            model,
            mmproj,
            rule=self.options.rule,
            embedding_cache=True,
            **self.runtime.scorer_kwargs(),
            **kwargs,
        )
        if self.explain:
            fmt = getattr(scorer.backend, "chat_format", None)
            if fmt is not None:
                announce(fmt.describe())
        return scorer


def _prompt_text(value: str | None) -> str | None:
    """``--prompt TEXT`` or ``--prompt @FILE``."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot read the prompt file ({exc.strerror})") from None


def rerank_options(fn: Callable) -> Callable:
    """Add the fine-stage options; pass them on as ``rerank`` (None without --rerank)."""

    @functools.wraps(fn)
    def wrapper(
        *args,
        rerank: bool,
        rerank_k,
        vlm_model,
        mmproj,
        enhance,
        gate,
        gate_signal,
        rule,
        fusion,
        listwise,
        prompt,
        explain,
        vlm_runtime,
        **kwargs,
    ):
        request = None
        mode = gated_mode(enhance, gate, gate_signal)
        if rerank or listwise:
            request = RerankRequest(
                options=RerankOptions(
                    k=rerank_k or DEFAULT_RERANK_K,
                    enhance=mode,
                    rule=rule,
                    fusion=fusion,
                    listwise=listwise,
                ),
                vlm_model=vlm_model,
                mmproj=mmproj,
                prompt=_prompt_text(prompt),
                explain=explain,
                runtime=vlm_runtime,
            )
        elif explain:
            raise click.UsageError("--explain shows the fine stage's numbers: add --rerank")
        elif rerank_k is not None:
            raise click.UsageError("--rerank-k is the rerank depth: add --rerank")
        return fn(*args, rerank=request, **kwargs)

    options = [
        click.option(
            "--rerank",
            is_flag=True,
            help=f"Rescore the coarse top-k with a VLM (RetLLM fine stage; k defaults to "
            f"{DEFAULT_RERANK_K}).",
        ),
        click.option(
            "--rerank-k",
            type=click.IntRange(min=1),
            help=f"How many coarse results the VLM reranks (default {DEFAULT_RERANK_K}, the paper's); "
            "-k sets how many are shown.",
        ),
        vlm_model_option,
        mmproj_option,
        click.option(
            "--enhance",
            type=click.Choice(["off", "gated", "always"]),
            default="gated",
            show_default=True,
            help="Visual enhancement: show the image a second time (gated: when unsure).",
        ),
        click.option(
            "--gate",
            type=click.FloatRange(0, 1),
            help=f"Threshold of --enhance gated on --gate-signal.  [default: {GATE_DEFAULT}]",
        ),
        gate_signal_option,
        rule_option,
        click.option(
            "--fusion",
            type=click.FloatRange(0, 1),
            metavar="ALPHA",
            help="Mix in the CLIP score: ALPHA*clip_norm + (1-ALPHA)*P(True).",
        ),
        click.option(
            "--listwise",
            is_flag=True,
            help="Image -> captions: the VLM picks among the k captions by number.",
        ),
        click.option(
            "--prompt",
            metavar="TEMPLATE|@FILE",
            help="Override the prompt ({query_text}, {candidate_text}, {query_image}, "
            "{candidate_image}); see docs/rerank.md.",
        ),
        click.option(
            "--explain",
            is_flag=True,
            help="Show per result: coarse rank, CLIP score, P(True), entropy, enhancement.",
        ),
    ]
    return vlm_runtime_options(functools.reduce(lambda f, opt: opt(f), reversed(options), wrapper))
