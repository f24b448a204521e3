"""Showing an ``EvalReport``: a terminal table, a markdown report, a Recall@1 plot, JSON.

``write_outputs(report, folder)`` writes ``results.json``, ``report.md`` and
``recall_at_1.png`` (matplotlib, the ``eval`` extra, imported only here), each to a
temporary file renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from retllm_lite.errors import BadInput, require
from retllm_lite.eval.protocol import LABELS, EvalReport

ARROWS = {"t2i": "T→I", "i2t": "I→T"}
JSON_NAME = "results.json"
MARKDOWN_NAME = "report.md"
PLOT_NAME = "recall_at_1.png"
MAX_LISTED_SKIPS = 50


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """Headers and rows (recall in %); ``–`` where a configuration has no such number."""
    dirs = report.settings.directions
    ks = report.settings.recall_ks
    fine = any(r.enhanced for r in report.results)
    headers = ["configuration"]
    headers += [f"{ARROWS[d]} R@{k}" for d in dirs for k in ks]
    headers.append("RSUM")
    if fine:
        headers += [f"{ARROWS[d]} enh%" for d in dirs]
    rows = []
    for r in report.results:
        row = [r.name]
        row += [_pct(r.recall.get(d, {}).get(k)) for d in dirs for k in ks]
        total = r.rsum(dirs)
        row.append("–" if total is None else f"{100 * total:.1f}")
        if fine:
            row += [_pct(r.enhanced.get(d)) for d in dirs]
        rows.append(row)
    return headers, rows


def text_table(report: EvalReport) -> str:
    headers, rows = table(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return f"{first}  {rest}".rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def summary_lines(report: EvalReport) -> list[str]:
    """The dataset, models and cost, one fact a line."""
    ds = report.dataset
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(ds["skipped"].items())) or "none"
    split = f", split {ds['split']}" if ds.get("split") else ""
    cut = ds.get("limit") and ds["available"] > ds["limit"]
    limit = f" (the first {ds['limit']} of {ds['available']}: --limit)" if cut else ""
    lines = [
        f"Dataset: {ds['path']} ({ds['format']}{split}): {ds['images']} images, "
        f"{ds['captions']} captions{limit}; skipped: {skipped}",
    ]
    clip = report.models["clip"]
    lines.append(f"CLIP: {clip['name']} ({clip['variant']}, manifest sha256 {clip['manifest_sha256'][:12]}…)")
    vlm = report.models.get("vlm")
    if vlm:
        mm = (vlm.get("mmproj_sha256") or "")[:12]
        lines.append(
            f"VLM: {Path(vlm['model']).name} (sha256 {vlm['model_sha256'][:12]}…), "
            f"projector {Path(vlm['mmproj']).name} (sha256 {mm}…), rule {vlm['rule']}"
        )
    c, t = report.counts, report.timings
    lines.append(
        f"Work: {c['images_embedded']} images and {c['texts_embedded']} captions embedded "
        f"({c['image_vectors_cached']} + {c['text_vectors_cached']} cached); "
        f"{c['pairs_scored'] + c['listwise_scored']} VLM prompts run "
        f"({c['pair_scores_cached'] + c['listwise_cached']} cached); {t['total']:.1f} s"
    )
    return lines


def markdown(report: EvalReport, plot: str | None = PLOT_NAME) -> str:
    s = report.settings
    headers, rows = table(report)
    out = [f"# retllm eval: {Path(report.dataset['path']).name}", ""]
    out += [f"- {line}" for line in summary_lines(report)]
    if s.fine:
        tie = ", ".join("entropy" if tb else "none" for tb in s.tie_breaks)
        enhance = ", ".join(r["enhance"] for r in _fine_rows(report)) or "–"
        out.append(f"- Fine stage: k = {', '.join(map(str, s.ks))}; enhancement {enhance}; tie-break {tie}")
    out += ["", "## Recall@K (%)", ""]
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out.append("")
    out.append(
        "R@K: text→image, the share of captions whose image is among the first K; "
        "image→text, the share of images with any of their captions among the first K. "
        "RSUM: the sum of all of them (rows covering every direction). "
        "enh%: the share of reranked pairs scored with the image inserted a second time."
    )
    if plot:
        out += ["", f"![Recall@1 per configuration]({plot})"]
    picks = [r for r in report.results if r.pick_positions is not None]
    if picks:
        out += ["", "## Listwise picks", ""]
        out += [
            f"- {r.name}: position picked (1 = CLIP's best) "
            + ", ".join(f"{i + 1}: {n}" for i, n in enumerate(r.pick_positions or []))
            for r in picks
        ]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    t = report.timings
    out += ["", "## Timings (s)", ""] + [f"- {k}: {v:.3f}" for k, v in t.items()]
    skipped = report.dataset.get("skipped_files") or []
    if skipped:
        out += ["", f"## Skipped images ({len(skipped)})", ""]
        out += [
            f"- `{f['path']}`: {f['reason']}" + (f" ({f['detail']})" if f.get("detail") else "")
            for f in skipped[:MAX_LISTED_SKIPS]
        ]
        if len(skipped) > MAX_LISTED_SKIPS:
            out.append(f"- … and {len(skipped) - MAX_LISTED_SKIPS} more (all in {JSON_NAME})")
    vlm = report.models.get("vlm")
    if vlm:
        out += ["", "## Prompts", ""]
        for d, prompt in vlm.get("prompts", {}).items():
            out += [f"{LABELS[d]}:", "", "```", prompt, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _fine_rows(report: EvalReport) -> list[dict]:
    seen: dict[str, dict] = {}
    for r in report.results:
        if r.config.stage == "fine":
            d = r.config.to_dict()
            seen.setdefault(d["enhance"], d)
    return list(seen.values())


def plot(report: EvalReport, path: Path) -> None:
    """Horizontal bars: Recall@1 per configuration, one bar per direction; dashed: coarse."""
    require("matplotlib", "eval", "The Recall@1 plot")
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    results = report.results
    dirs = report.settings.directions
    height = 0.8 / len(dirs)
    fig = Figure(figsize=(8, 1.4 + 0.22 * len(results) * len(dirs)))
    ax = fig.subplots()
    for n, d in enumerate(dirs):
        values = [100 * r.recall.get(d, {}).get(1, float("nan")) for r in results]
        ys = [i + (n - (len(dirs) - 1) / 2) * height for i in range(len(results))]
        bars = ax.barh(ys, values, height=height, label=LABELS[d], color=f"C{n}")
        labels = [_pct(v / 100) if v == v else "" for v in values]  # NaN: no such number
        ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
        coarse = report.results[0].recall.get(d, {}).get(1)
        if coarse is not None:
            ax.axvline(100 * coarse, color=f"C{n}", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(results)), labels=[r.name for r in results], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("Recall@1 (%); dashed: coarse (CLIP)")
    ax.set_title(f"Recall@1: {Path(report.dataset['path']).name} ({report.dataset['images']} images)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)


def _atomic(path: Path, write: Callable, *, binary: bool = False) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(report: EvalReport, folder: str | Path) -> dict[str, Path]:
    """results.json, report.md and recall_at_1.png in ``folder`` (created if needed)."""
    out = Path(folder).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME, "plot": out / PLOT_NAME}
        _atomic(paths["json"], lambda f: json.dump(report.to_dict(), f, indent=2, ensure_ascii=False))
        plot(report, paths["plot"])
        _atomic(paths["markdown"], lambda f: f.write(markdown(report, PLOT_NAME)))
    except OSError as exc:
        raise BadInput(
            f"{out}: cannot write the report ({exc.strerror or exc})", hint="pass another --out"
        ) from None
    return paths
