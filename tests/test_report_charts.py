"""The evaluation report's charts stay readable with many series (issue #19, item 3).

``storerec evaluate --pipeline`` gives each model three ``<model> · served, ...`` rows, so four
models make 16 series and six make 24. These tests draw the real figures and check, with
matplotlib's own text extents, what a reader would see: no two labels overlap, every label lies
inside the image, the key does not cover the plot, every series looks different, and a model's
rows are drawn together, best model first.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from storerec.evaluation import report
from storerec.evaluation.report import _figures, write_report

K = 10
VARIANTS = ("served, no diversity", "served, diversity 0.3", "served, diversity 0.3 + max 3 per category")  # as evaluate_served labels them
SEGMENTS = ("active", "churned", "cold", "dormant", "new")


def make_results(models: list[str], variants: tuple[str, ...] = VARIANTS, seed: int = 7) -> dict[str, dict[str, float]]:
    """A results dict shaped like compare_models' (``--pipeline``): per model its raw row, then one
    row per served variant with nearby values; the last variant copies the one before it, as the
    category cap often changes nothing, so some points coincide exactly."""
    rng = random.Random(seed)
    results: dict[str, dict[str, float]] = {}
    for model in models:
        ndcg, coverage = rng.uniform(0.02, 0.09), rng.uniform(0.05, 0.8)
        rows = [model] + [f"{model} · {v}" for v in variants]
        previous: dict[str, float] | None = None
        for i, name in enumerate(rows):
            if previous is not None and i == len(rows) - 1 and len(rows) > 2:
                results[name] = dict(previous)
                continue
            f_acc, f_cov = (1.0, 1.0) if i == 0 else (rng.uniform(0.8, 1.1), rng.uniform(0.7, 1.2))
            row = {f"{m}@{K}": ndcg * f_acc * scale for m, scale in
                   (("ndcg", 1.0), ("precision", 0.25), ("recall", 1.8), ("map", 0.7), ("mrr", 1.0), ("hitrate", 2.4))}
            row |= {f"coverage@{K}": min(1.0, coverage * f_cov), f"diversity@{K}": rng.uniform(0.8, 1.0), f"novelty@{K}": 3.0,
                    f"avg_popularity@{K}": 80.0, f"cold_item_share@{K}": 0.0, f"cold_item_recall@{K}": 0.0}
            for seg in SEGMENTS:
                row[f"ndcg@{K}/segment={seg}"] = rng.uniform(0.0, 0.2)
                row[f"n_users/segment={seg}"] = 40.0
            results[name] = previous = row
    return results


FOUR = ["popularity", "als", "lightfm", "ease"]  # training.run_models: 16 series with --pipeline


@pytest.fixture(scope="module")
def sixteen() -> tuple[dict[str, dict[str, float]], dict[str, Figure], dict[str, list[tuple[Text, Bbox]]]]:
    """The 16-series figures, drawn once: (results, figures by file name, drawn texts by file name)."""
    results = make_results(FOUR)
    figures = _figures(results, K)
    return results, figures, {name: drawn_texts(fig) for name, fig in figures.items()}


def drawn_texts(fig: Figure) -> list[tuple[Text, Bbox]]:
    """Every text the Agg renderer actually draws (hidden tick labels and ticks outside the view
    are not drawn, so they do not count), with its extent in pixels."""
    seen: dict[int, Text] = {}
    original = RendererAgg.draw_text

    def record(self: Any, gc: Any, x: float, y: float, s: str, prop: Any, angle: float, ismath: Any = False, mtext: Any = None) -> Any:
        if mtext is not None and s.strip():
            seen[id(mtext)] = mtext
        return original(self, gc, x, y, s, prop, angle, ismath, mtext)

    RendererAgg.draw_text = record  # type: ignore[method-assign]
    try:
        fig.canvas.draw()
    finally:
        RendererAgg.draw_text = original  # type: ignore[method-assign]
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    return [(t, t.get_window_extent(renderer)) for t in seen.values()]


def overlap(a: Bbox, b: Bbox, tol: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def assert_readable(name: str, fig: Figure, texts: list[tuple[Text, Bbox]], n_series: int) -> None:
    """No drawn text runs off the image or overlaps another."""
    assert len(texts) > n_series, f"{name}: expected the series' labels to be drawn"
    width, height = fig.canvas.get_width_height()
    for text, box in texts:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, f"{name}: {text.get_text()!r} runs off the image"
    clashes = [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(texts) for b, bb in texts[i + 1:] if overlap(ba, bb)]
    assert not clashes, f"{name}: overlapping labels {clashes[:5]}"


def test_no_label_overlaps_another_or_leaves_the_image(sixteen) -> None:
    results, figures, drawn = sixteen
    assert set(figures) == {"metrics.png", "ndcg_by_segment.png", "coverage_vs_ndcg.png"}
    for name, fig in figures.items():
        assert_readable(name, fig, drawn[name], len(results))


def test_values_and_numbers_stay_inside_their_panel_and_titles_and_key_stay_off_the_data(sixteen) -> None:
    _, figures, texts = sixteen
    for name, fig in figures.items():
        drawn = {id(t): box for t, box in texts[name]}
        axes_boxes = [ax.get_window_extent() for ax in fig.axes]
        for ax, ax_box in zip(fig.axes, axes_boxes):
            for text in ax.texts:  # bar values, scatter numbers
                box = drawn[id(text)]
                assert ax_box.x0 <= box.x0 and box.x1 <= ax_box.x1 and ax_box.y0 <= box.y0 and box.y1 <= ax_box.y1, (
                    f"{name}: {text.get_text()!r} leaves its panel")
        titles = [ax.title for ax in fig.axes] + ([fig._suptitle] if fig._suptitle is not None else [])
        legends = [*fig.legends] + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        for artist in titles + legends:
            box = artist.get_window_extent()
            assert not any(overlap(box, ab) for ab in axes_boxes), f"{name}: {type(artist).__name__} covers a plot"
        for legend in legends:
            for text in legend.get_texts():
                assert id(text) in drawn


def test_every_series_looks_different(sixteen) -> None:
    results, figures, _ = sixteen
    for name in ("metrics.png", "ndcg_by_segment.png"):
        for ax in figures[name].axes:
            styles = {(tuple(p.get_facecolor()), p.get_hatch() or "") for p in ax.patches}
            assert len(ax.patches) == len(results) and len(styles) == len(results), f"{name}: two series share fill and hatch"
    # a served variant has the same hatch under every model, and one of its own; raw rows are solid
    first = figures["metrics.png"].axes[0]
    labels = [t.get_text() for t in first.get_yticklabels()]
    hatches: dict[str, set[str]] = {}
    for label, patch in zip(labels, first.patches):
        hatches.setdefault(label.partition(" · ")[2], set()).add(patch.get_hatch() or "")
    assert hatches[""] == {""} and all(len(h) == 1 for h in hatches.values()), hatches
    assert len({h for hs in hatches.values() for h in hs}) == 1 + len(VARIANTS), hatches
    ax = figures["coverage_vs_ndcg.png"].axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) == len(results)
    looks = {(tuple(c.get_facecolor()[0]), tuple(c.get_edgecolor()[0]), c.get_paths()[0].vertices.round(3).tobytes()) for c in points}
    assert len(looks) == len(results), "two points share colour and marker"
    # models (raw rows) get clearly different colours: at least 0.25 apart in RGB
    raw = list(figures["metrics.png"].axes[0].patches)[:: 1 + len(VARIANTS)]  # rows are grouped: see the next test
    colours = [p.get_facecolor()[:3] for p in raw]
    closest = min(math.dist(a, b) for i, a in enumerate(colours) for b in colours[i + 1:])
    assert closest > 0.25, f"two models' colours are only {closest:.2f} apart"


def test_rows_are_grouped_per_model_best_model_first(sixteen) -> None:
    results, figures, _ = sixteen
    for name in ("metrics.png", "ndcg_by_segment.png"):
        ax = figures[name].axes[0]
        ticks = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))  # y grows downwards: top first
        labels = [label for _, label in ticks]
        assert sorted(labels) == sorted(results)
        bases = [label.split(" · ")[0] for label in labels]
        groups = [b for i, b in enumerate(bases) if i == 0 or b != bases[i - 1]]
        assert len(groups) == len(FOUR), f"{name}: a model's rows are split: {bases}"
        expected = sorted(FOUR, key=lambda m: results[m][f"ndcg@{K}"], reverse=True)
        assert groups == expected, f"{name}: models not ordered by NDCG@{K}"
        assert all(labels[i * (1 + len(VARIANTS))] == base for i, base in enumerate(groups)), "the raw row leads its group"
        assert ax.get_ylim()[0] > ax.get_ylim()[1], "best at the top"
    assert expected != FOUR, "the test data must not already be in NDCG order"


def test_scatter_numbers_each_point_next_to_it_and_keys_the_numbers(sixteen) -> None:
    results, figures, texts = sixteen
    fig = figures["coverage_vs_ndcg.png"]
    ax = fig.axes[0]
    drawn = {id(t): box for t, box in texts["coverage_vs_ndcg.png"]}
    numbers = [t for t in ax.texts if isinstance(t, Annotation)]
    assert sorted(int(t.get_text()) for t in numbers) == list(range(1, len(results) + 1))
    key = [t.get_text() for t in fig.legends[0].get_texts()]
    px = fig.dpi / 72
    centres = {}
    for label in key:
        number, name = label.split("  ", 1)
        x, y = results[name][f"coverage@{K}"], results[name][f"ndcg@{K}"]
        centres[number] = tuple(ax.transData.transform((x, y)))
    marker_boxes = [Bbox.from_extents(cx - 3 * px, cy - 3 * px, cx + 3 * px, cy + 3 * px) for cx, cy in centres.values()]
    for text in numbers:
        box = drawn[id(text)]
        cx, cy = centres[text.get_text()]
        assert math.dist(((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2), (cx, cy)) < 65 * px, f"label {text.get_text()} far from its point"
        assert not any(overlap(box, m) for m in marker_boxes), f"label {text.get_text()} covers a point"


@pytest.mark.slow
def test_twenty_four_series_stay_readable() -> None:
    """Six models with ``--pipeline``: 24 series."""
    results = make_results(["als", "bpr", "ease", "itemknn", "lightfm", "popularity"], seed=3)
    for name, fig in _figures(results, K).items():
        assert_readable(name, fig, drawn_texts(fig), len(results))


@pytest.fixture
def rendered(monkeypatch) -> dict[str, Figure]:
    """The figures write_report renders, kept for inspection."""
    kept: dict[str, Figure] = {}

    def keep(results: dict[str, dict[str, float]], k: int) -> dict[str, Figure]:
        kept.update(_figures(results, k))
        return kept

    monkeypatch.setattr(report, "_figures", keep)
    return kept


def test_write_report_lists_the_three_charts(tmp_path, rendered) -> None:
    results = make_results(["popularity", "itemknn"], variants=())  # `storerec evaluate --models popularity,itemknn`
    path = write_report(results, K, tmp_path, {"split": "temporal"})
    text = path.read_text()
    assert path == tmp_path / "report.md"
    charts = ["metrics.png", "ndcg_by_segment.png", "coverage_vs_ndcg.png"]
    assert text.rstrip().splitlines()[-3:] == [f"![{c}]({c})" for c in charts]
    assert "| itemknn |" in text and "- **split**: temporal" in text
    for chart in charts:
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*charts, "report.md"]), "no temporary files left"
    assert list(rendered) == charts
    for name, fig in rendered.items():
        assert_readable(name, fig, drawn_texts(fig), len(results))


def test_missing_segments_and_metrics_do_not_break_the_charts(tmp_path, rendered) -> None:
    rows = make_results(["ease", "als"], variants=VARIANTS[:1])
    results = {name: {k: v for k, v in row.items() if "segment=" not in k} for name, row in rows.items()}
    del results["als · served, no diversity"][f"coverage@{K}"]  # e.g. a run logged before the metric existed
    path = write_report(results, K, tmp_path)
    links = [line for line in path.read_text().splitlines() if line.startswith("![")]
    assert links == ["![metrics.png](metrics.png)", "![coverage_vs_ndcg.png](coverage_vs_ndcg.png)"]
    fig = rendered["coverage_vs_ndcg.png"]
    assert sum(1 for t in fig.axes[0].texts if isinstance(t, Annotation)) == len(results) - 1, "no number for a point not drawn"
    missing = [t.get_text().split("  ", 1)[1] for t in fig.legends[0].get_texts() if t.get_text().endswith("(n/a)")]
    assert missing == ["als · served, no diversity (n/a)"], "the key says which point is missing"
    for name, f in rendered.items():
        assert_readable(name, f, drawn_texts(f), len(results))
