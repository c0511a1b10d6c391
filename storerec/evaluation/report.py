"""Evaluation report: a Markdown page with PNG charts comparing models on one split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storerec.core.tables import markdown_table

HEADLINE = ("ndcg", "precision", "recall", "map", "mrr", "hitrate", "coverage", "diversity", "novelty", "avg_popularity")


def _charts(results: dict[str, dict[str, float]], k: int, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display; set here, not at import time
    import matplotlib.pyplot as plt

    names = list(results)
    files = []
    fig, ax = plt.subplots(figsize=(8, 4))
    metrics = ["ndcg", "precision", "recall", "map", "hitrate"]
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        ax.bar([i + j * width for i in range(len(metrics))], [results[name].get(f"{m}@{k}", 0.0) for m in metrics], width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(metrics))], [f"{m}@{k}" for m in metrics])
    ax.set_title("Ranking metrics per model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    files.append("metrics.png")

    segments = sorted({key.split("segment=")[1] for r in results.values() for key in r if key.startswith(f"ndcg@{k}/segment=")})
    if segments:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            vals = [results[name].get(f"ndcg@{k}/segment={s}", 0.0) for s in segments]
            ax.bar([i + j * width for i in range(len(segments))], vals, width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(segments))], segments)
        ax.set_title(f"NDCG@{k} per lifecycle segment")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "ndcg_by_segment.png", dpi=110)
        plt.close(fig)
        files.append("ndcg_by_segment.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ax.scatter(results[name].get(f"coverage@{k}", 0.0), results[name].get(f"ndcg@{k}", 0.0), s=60)
        ax.annotate(name, (results[name].get(f"coverage@{k}", 0.0), results[name].get(f"ndcg@{k}", 0.0)))
    ax.set_xlabel(f"catalogue coverage@{k}")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title("Accuracy against coverage")
    fig.tight_layout()
    fig.savefig(out / "coverage_vs_ndcg.png", dpi=110)
    plt.close(fig)
    files.append("coverage_vs_ndcg.png")
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
