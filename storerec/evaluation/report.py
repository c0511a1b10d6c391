"""Evaluation report: a Markdown page with PNG charts comparing models on one split.

The charts stay readable with many series (``storerec evaluate --pipeline`` gives every model
three extra ``<model> · served, ...`` rows, so four models make 16 series): the bar charts are
small multiples (one panel per metric or segment) with the series named on a shared vertical
axis, not in a legend; a model's rows sit together, one colour per model and a lighter, hatched
shade per served variant; models are ordered by NDCG, best on top. The coverage/NDCG scatter
numbers its points (placed so that no two labels overlap and all stay inside the axes) and
lists the numbers in a key beside the plot. Figures grow with the number of series.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storerec.core.tables import markdown_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEADLINE = ("ndcg", "precision", "recall", "map", "mrr", "hitrate", "coverage", "diversity", "novelty", "avg_popularity")
BAR_METRICS = ("ndcg", "precision", "recall", "map", "hitrate")  # the panels of metrics.png
VARIANT_SEP = " · "  # "<model> · <variant>": rows compare_models/replay_versions add for the serving pipeline
DPI = 110
ROW_IN = 0.24  # inches per bar row: room for one 8 pt label and its value
GROUP_GAP = 0.6  # extra rows of space between two models' groups
PANEL_IN = 2.3  # inches per small-multiple panel
CHAR_IN = 0.068  # rough width of one 8 pt character, to size the label column / key
HATCHES = ("", "////", "....", "xxxx", "\\\\", "++++", "oooo", "----")  # raw row, then one per served variant
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class _Style:
    """How one row of ``results`` is drawn: its model's colour, shaded and hatched per variant."""

    name: str
    base: str  # the model: the name before " · " (the whole name for a raw row)
    variant: int  # 0 for the raw model, else 1 + the variant's index among all variants seen
    color: tuple[float, float, float]  # the model's colour
    face: tuple[float, float, float]  # bar fill: ``color``, lighter for served variants
    hatch: str
    marker: str


def _styles(results: dict[str, dict[str, float]], k: int) -> list[_Style]:
    """One style per row, in drawing order: models by their raw row's NDCG@k (else their best
    row's), best first, missing last; within a model the raw row, then its variants in the order
    they were added. Colours are per model (tab10, or evenly spaced hues beyond 10 models), the
    variant sets the shade, hatch and marker, so every row looks different from every other."""
    from matplotlib import colormaps

    groups: dict[str, list[str]] = {}
    variants: list[str] = []
    for name in results:
        base, sep, variant = name.partition(VARIANT_SEP)
        groups.setdefault(base, []).append(name)
        if sep and variant not in variants:
            variants.append(variant)

    def score(base: str) -> float:
        raw = results.get(base, {}).get(f"ndcg@{k}")
        vals = [raw] if raw is not None else [results[n].get(f"ndcg@{k}") for n in groups[base]]
        finite = [v for v in vals if v is not None and not math.isnan(v)]
        return max(finite) if finite else -math.inf

    order = sorted(groups, key=score, reverse=True)
    if len(order) <= 10:
        palette = [tuple(c) for c in colormaps["tab10"].colors][: len(order)]  # type: ignore[attr-defined]
    else:
        palette = [tuple(colormaps["turbo"](0.05 + 0.9 * i / (len(order) - 1))[:3]) for i in range(len(order))]
    styles = []
    for base, color in zip(order, palette):
        rgb = (float(color[0]), float(color[1]), float(color[2]))
        raw_first = sorted(groups[base], key=lambda n: n != base)  # stable: the variants keep their order
        for name in raw_first:
            _, sep, variant = name.partition(VARIANT_SEP)
            v = variants.index(variant) + 1 if sep else 0
            mix = min(0.65, 0.22 * v)  # lighter per variant, never white
            face = (rgb[0] + (1 - rgb[0]) * mix, rgb[1] + (1 - rgb[1]) * mix, rgb[2] + (1 - rgb[2]) * mix)
            styles.append(_Style(name, base, v, rgb, face, HATCHES[v % len(HATCHES)], MARKERS[v % len(MARKERS)]))
    return styles


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, so no global state and no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _freeze(fig: Figure) -> None:
    """Run the constrained layout once and keep it: saving (or a test drawing the figure) then
    does not lay it out again, and the scatter's labels can be placed in final pixels."""
    fig.draw_without_rendering()
    fig.set_layout_engine("none")


def _value(results: dict[str, dict[str, float]], name: str, key: str) -> float:
    v = results[name].get(key)
    return float("nan") if v is None else float(v)


def _bar_panels(
    results: dict[str, dict[str, float]], styles: list[_Style], panels: Sequence[tuple[str, str]], title: str
) -> Figure:
    """Small multiples: one horizontal-bar panel per ``(metric key, panel title)``, series on a
    shared y axis (named once, on the left), each panel on its own scale from 0, values printed
    at the bar ends, thin rules between models."""
    from matplotlib.ticker import MaxNLocator

    ys: list[float] = []
    y = 0.0
    for i, s in enumerate(styles):
        if i and s.base != styles[i - 1].base:
            y += GROUP_GAP
        ys.append(y)
        y += 1
    rows = max(1.0, y)
    label_in = 0.4 + CHAR_IN * max((len(s.name) for s in styles), default=5)
    fig = _new_figure(label_in + PANEL_IN * len(panels), max(2.4, 1.1 + ROW_IN * rows))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (key, panel_title) in zip(axes, panels):
        vals = [_value(results, s.name, key) for s in styles]
        bars = ax.barh(ys, [0.0 if math.isnan(v) else v for v in vals], height=0.8, color=[s.face for s in styles],
                       edgecolor=[s.color for s in styles], linewidth=0.7)
        for bar, s in zip(bars, styles):
            bar.set_hatch(s.hatch)
        finite = [v for v in vals if not math.isnan(v)]
        top = max(finite, default=0.0)
        top = top if top > 0 else 1.0
        ax.set_xlim(0, top * 1.35)  # room for the printed values
        for yy, v in zip(ys, vals):
            text = f" {v:.3f}" if not math.isnan(v) else " n/a"
            ax.text(v if not math.isnan(v) else 0.0, yy, text, va="center", ha="left", fontsize=7, in_layout=False)  # inside: xlim has room
        for i in range(1, len(styles)):
            if styles[i].base != styles[i - 1].base:
                ax.axhline((ys[i] + ys[i - 1]) / 2, color="0.8", linewidth=0.6)
        ax.set_title(panel_title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", color="0.92", linewidth=0.6)
        ax.set_axisbelow(True)
    axes[0].set_ylim(y - 1 + 0.6 if styles else 0.6, -0.6)  # best model on top
    axes[0].set_yticks(ys, [s.name for s in styles], fontsize=8)
    axes[0].tick_params(axis="y", length=0)
    fig.suptitle(title, fontsize=11)
    _freeze(fig)
    return fig


def _place_labels(fig: Figure, ax: Any, points: list[tuple[float, float] | None], texts: list[str]) -> list[Any]:
    """Number the scatter's points: each label goes to the nearest spot around its point (rings
    of 16 directions) that stays inside the axes and overlaps no other label or point, preferring
    spots nearer its own point than any other; far-off or ambiguous labels get a leader line.
    Works in pixels, so it needs the final layout: the caller freezes it first."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # an Agg canvas: see _new_figure
    px = fig.dpi / 72
    box = ax.get_window_extent(renderer)
    marker_r = 5.0 * px  # s=50 markers: about 7 pt across
    pts = [None if p is None else tuple(ax.transData.transform(p)) for p in points]
    obstacles = [(x - marker_r, y - marker_r, x + marker_r, y + marker_r) for p in pts if p is not None for x, y in [p]]
    placed: list[tuple[float, float, float, float]] = []

    def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    labels = []
    for i, (p, text) in enumerate(zip(pts, texts)):
        if p is None:
            continue
        probe = fig.text(0, 0, text, fontsize=8)  # (an annotation off its axes would measure as empty)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        hw, hh = ext.width / 2 + 1.5, ext.height / 2 + 1.5
        others = [q for j, q in enumerate(pts) if q is not None and j != i]
        best: tuple[tuple[bool, float, bool, float], float, float] | None = None
        for radius in (8, 11, 15, 20, 26, 33, 41, 50, 60):
            for step in range(16):
                angle = math.pi * 2 * step / 16
                dx, dy = radius * math.cos(angle), radius * math.sin(angle)
                cx, cy = p[0] + dx * px, p[1] + dy * px
                cand = (cx - hw, cy - hh, cx + hw, cy + hh)
                outside = cand[0] < box.x0 + 2 or cand[2] > box.x1 - 2 or cand[1] < box.y0 + 2 or cand[3] > box.y1 - 2
                # ambiguous: another point is nearer the label than its own (then it gets a leader line)
                own = math.hypot(cx - p[0], cy - p[1])
                ambiguous = any(math.hypot(cx - q[0], cy - q[1]) < own for q in others)
                cost = (outside, sum(overlap(cand, o) for o in obstacles + placed), ambiguous, radius)
                if best is None or cost < best[0]:
                    best = (cost, dx, dy)
        assert best is not None
        (_, _, unclear, distance), dx, dy = best
        cx, cy = p[0] + dx * px, p[1] + dy * px
        placed.append((cx - hw, cy - hh, cx + hw, cy + hh))
        leader = {"arrowstyle": "-", "color": "0.45", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}
        labels.append(ax.annotate(text, p, xycoords="figure pixels", xytext=(dx, dy), textcoords="offset points", ha="center",
                                  va="center", fontsize=8, arrowprops=leader if distance > 12 or unclear else None))
    return labels


def _scatter(results: dict[str, dict[str, float]], styles: list[_Style], k: int) -> Figure:
    """Coverage against NDCG: numbered points (model colour, one marker per variant), thin
    lines from a model's raw point to its served variants, and a numbered key outside the axes."""
    n = len(styles)
    key_in = 0.9 + CHAR_IN * max((len(s.name) for s in styles), default=5)
    ncols = max(1, math.ceil(n / 28))
    fig = _new_figure(5.6 + key_in * ncols, max(4.4, 1.3 + 0.2 * math.ceil(n / ncols)))
    ax = fig.add_subplot()
    points: list[tuple[float, float] | None] = []
    for i, s in enumerate(styles):
        x, y = _value(results, s.name, f"coverage@{k}"), _value(results, s.name, f"ndcg@{k}")
        ok = not (math.isnan(x) or math.isnan(y))
        points.append((x, y) if ok else None)
        ax.scatter([x] if ok else [], [y] if ok else [], s=50, color=[s.face], marker=s.marker, edgecolors=[s.color],
                   linewidths=1.0, zorder=3, label=f"{i + 1}  {s.name}" + ("" if ok else " (n/a)"))
    for i, s in enumerate(styles):
        raw = next((j for j, t in enumerate(styles) if t.base == s.base and t.variant == 0), None)
        if raw is not None and raw != i and points[raw] is not None and points[i] is not None:
            (x0, y0), (x1, y1) = points[raw], points[i]  # type: ignore[misc]
            ax.plot([x0, x1], [y0, y1], color=s.color, linewidth=0.8, alpha=0.45, zorder=2)
    ax.margins(0.12)
    ax.set_xlabel(f"catalogue coverage@{k}")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title("Accuracy against coverage")
    ax.grid(color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    if styles:
        fig.legend(loc="outside right upper", fontsize=8, ncols=ncols, title="key", title_fontsize=8, frameon=False, handletextpad=0.4)
    _freeze(fig)  # label placement works in pixels
    _place_labels(fig, ax, points, [str(i + 1) for i in range(n)])
    return fig


def _figures(results: dict[str, dict[str, float]], k: int) -> dict[str, Figure]:
    """The report's charts by file name, not yet saved (tests inspect their layout)."""
    styles = _styles(results, k)
    figures = {"metrics.png": _bar_panels(results, styles, [(f"{m}@{k}", f"{m}@{k}") for m in BAR_METRICS], "Ranking metrics per model")}
    segments = sorted({key.split("segment=")[1] for r in results.values() for key in r if key.startswith(f"ndcg@{k}/segment=")})
    if segments:
        panels = []
        for seg in segments:
            counts = {r.get(f"n_users/segment={seg}") for r in results.values()}
            count = next(iter(counts)) if len(counts) == 1 else None
            panels.append((f"ndcg@{k}/segment={seg}", seg if count is None else f"{seg} ({count:.0f} users)"))
        figures["ndcg_by_segment.png"] = _bar_panels(results, styles, panels, f"NDCG@{k} per lifecycle segment")
    figures["coverage_vs_ndcg.png"] = _scatter(results, styles, k)
    return figures


def _charts(results: dict[str, dict[str, float]], k: int, out: Path) -> list[str]:
    """Save the charts as PNGs in ``out`` (each written whole, then renamed into place); returns their file names."""
    files = []
    for name, fig in _figures(results, k).items():
        tmp = out / f".{name}.{os.getpid()}.tmp"
        try:
            fig.savefig(tmp, format="png", dpi=DPI)
            tmp.replace(out / name)
        finally:
            tmp.unlink(missing_ok=True)
        files.append(name)
    return files


def write_report(results: dict[str, dict[str, float]], k: int, out: Path, context: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` (+ PNG charts) to ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(results, k, out)
    lines = ["# storerec evaluation", ""]
    for key, value in (context or {}).items():
        lines.append(f"- **{key}**: {value}")
    def table(columns: list[str], cell: Any) -> str:
        """One row per model: its name, then ``cell(results, column)`` for each column."""
        rows = [[name, *(cell(r, c) for c in columns)] for name, r in results.items()]
        return markdown_table(["model", *columns], rows, align="l" + "r" * len(columns))

    lines += ["", table([f"{m}@{k}" for m in HEADLINE], lambda r, c: f"{r.get(c, float('nan')):.4f}")]
    segments = sorted({key.split("segment=")[1] for r in results.values() for key in r if key.startswith(f"ndcg@{k}/segment=")})
    if segments:
        lines += ["", f"## NDCG@{k} per lifecycle segment (users in parentheses)", ""]
        lines.append(
            table(segments, lambda r, s: f"{r.get(f'ndcg@{k}/segment={s}', float('nan')):.4f} ({r.get(f'n_users/segment={s}', 0):.0f})")
        )
    cold = [f"cold_item_share@{k}", f"cold_item_recall@{k}"]
    lines += ["", "## Cold items (no train interactions)", "", table(cold, lambda r, c: f"{r.get(c, float('nan')):.4f}")]
    lines += [""] + [f"![{c}]({c})" for c in charts]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
