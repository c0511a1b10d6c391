"""``storerec ab-report``: the A/B report of one experiment (Markdown, HTML, JSON, a chart),
logged to MLflow; ``--resalt N`` adds the A/A check."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.core.errors import UserError
from storerec.core.tables import markdown_table
from storerec.evaluation.ab import analyze, per_unit
from storerec.events.eventlog import read_frames
from storerec.events.experiments import ExperimentConfig, load_experiments

METRIC_LABEL = {"ctr": "CTR", "conversion": "conversion", "revenue_per_user": "revenue per user"}


def find_experiment(path: Path | None, name: str, named_by: str = "experiments.file") -> ExperimentConfig:
    if path is None:
        raise UserError("no experiments file: set experiments.file in the config or pass --experiments-file")
    exps = load_experiments(path, named_by)
    for e in exps:
        if e.name == name:
            return e
    raise UserError(f"no experiment {name!r} in {path}; it has: {[e.name for e in exps] or 'none'}")


def resalt_check(units: pl.DataFrame, exp: ExperimentConfig, n: int, alpha: float = 0.05) -> dict[str, Any]:
    """A/A check: re-split the logged units with ``n`` other salts and count p < ``alpha``.

    Valid only when every variant served the same model with the same settings (then what a
    shopper saw does not depend on the variant, so any split is a fair A/A split)."""
    first = exp.variants[0]
    same = all((v.model, v.diversity_strength, v.max_per_category) == (first.model, first.diversity_strength, first.max_per_category) for v in exp.variants)
    if not same:
        raise UserError(f"--resalt is an A/A check: every variant of {exp.name!r} must serve the same model and settings")
    per_unit_only = units.group_by("unit").agg(pl.col(c).sum() for c in ("lists", "clicked_lists", "clicks", "purchases", "revenue"))
    unit_ids = per_unit_only["unit"].to_list()
    pvals: dict[str, list[float]] = {"ctr": [], "conversion": [], "revenue_per_user": []}
    for i in range(n):
        e = exp.model_copy(update={"salt": f"{exp.salt}/aa{i}"})
        variant = [e.assign(u).name for u in unit_ids]
        res = analyze(per_unit_only.with_columns(pl.Series("variant", variant)), exp.shares(), exp.control.name, bootstrap=0)
        for comps in res["comparisons"].values():
            for c in comps:
                pvals[c.metric].append(c.p_value)
    return {
        "salts": n,
        "alpha": alpha,
        "false_positive_share": {m: float(np.mean(np.array(v) < alpha)) if v else math.nan for m, v in pvals.items()},
        "p_values": pvals,
    }


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.4f}"


def _chart(result: dict[str, Any], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    ctrl = result["control"]
    for ax, metric in zip(axes, ("ctr", "conversion", "revenue_per_user")):
        vals = [result["variants"][n][metric] for n in names]
        errs = [0.0] * len(names)
        for j, n in enumerate(names):
            for c in result["comparisons"].get(n, []):
                if c.metric == metric:
                    errs[j] = (c.diff_ci[1] - c.diff_ci[0]) / 2
        ax.bar(names, vals, yerr=errs, capsize=6, color=["#888" if n == ctrl else "#2a7" for n in names])
        ax.set_title(METRIC_LABEL[metric] + " (error bar: 95% CI of the difference)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ab.png", dpi=110)
    plt.close(fig)
    return "ab.png"


def _html_inline(text: str) -> str:
    """The Markdown report's inline marks as HTML (`code`, **bold**); everything else escaped."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def render(exp: ExperimentConfig, result: dict[str, Any], extra: dict[str, Any], aa: dict[str, Any] | None) -> tuple[str, str]:
    """(Markdown, HTML) of the report."""
    head = ["variant", "users", "impressions", "clicks", "CTR", "conversion", "revenue/user", "share (configured)"]
    rows = [
        [n, str(v["users"]), str(v["impressions"]), str(v["clicks"]), _fmt(v["ctr"], True), _fmt(v["conversion"], True),
         f"{v['revenue_per_user']:.2f}", f"{v['share_configured']:.2f}"]
        for n, v in result["variants"].items()
    ]
    chead = ["variant vs " + result["control"], "metric", "control", "treatment", "abs. lift [95% CI]", "rel. lift [95% CI]", "p-value", "test"]
    crows = []
    for n, comps in result["comparisons"].items():
        for c in comps:
            pct = c.metric != "revenue_per_user"
            ci = f"{_fmt(c.diff, pct)} [{_fmt(c.diff_ci[0], pct)}, {_fmt(c.diff_ci[1], pct)}]"
            if c.metric == "revenue_per_user":
                b = c.extra["bootstrap_ci"]
                ci += f"; bootstrap [{b[0]:.4f}, {b[1]:.4f}]"
            rel = f"{_fmt(c.rel_lift, True)} [{_fmt(c.rel_ci[0], True)}, {_fmt(c.rel_ci[1], True)}]"
            p_text = f"{c.p_value:.4g}"
            crows.append([n, METRIC_LABEL[c.metric], _fmt(c.control, pct) if pct else f"{c.control:.4f}",
                          _fmt(c.treatment, pct) if pct else f"{c.treatment:.4f}", ci, rel, f"**{p_text}**" if c.p_value < 0.05 else p_text, c.test])
    s = result["srm"]
    srm_line = (
        f"**SRM: FLAGGED** (chi-square {s['chi2']:.2f}, p = {s['p_value']:.3g} < 0.001): users per variant "
        f"{s['observed']} do not match the configured shares (expected {({k: round(v, 1) for k, v in s['expected'].items()})}). "
        "Do not trust the lifts until the cause is found."
        if s["flagged"]
        else f"SRM check passed (chi-square {s['chi2']:.2f}, p = {s['p_value']:.3g}; flagged below 0.001)."
    )

    lines = [
        f"# A/B report: {exp.name}",
        "",
        f"Salt `{exp.salt}`; control `{exp.control.name}`; variants: "
        + ", ".join(
            f"`{v.name}` = `{v.model}` ({extra['versions'].get(v.name, 'not served')})"
            + (f", diversity {v.diversity_strength}" if v.diversity_strength is not None else "")
            for v in exp.variants
        )
        + ".",
        f"Impressions from {extra['first']} to {extra['last']}; units = users (session ids for anonymous shoppers). "
        f"{extra['orphans']} logged events name an item that was not in their list and are not counted.",
        "",
        srm_line,
        "",
        markdown_table(head, rows),
        "",
        "CTR = lists with a click / lists shown (standard error from per-user sums: a user's lists are not independent); "
        "conversion = users who bought a recommended item / users; revenue per user over all users of the variant. "
        "Bold p-values are below 0.05.",
        "",
        markdown_table(chead, crows) if crows else "(not enough users for a comparison)",
        "",
        "![metrics per variant](ab.png)",
    ]
    if aa:
        fp = aa["false_positive_share"]
        lines += [
            "",
            f"## A/A check ({aa['salts']} re-splits with other salts)",
            "",
            "Share of re-splits with p < 0.05 (expected about 5 % when the tests are calibrated): "
            + ", ".join(f"{METRIC_LABEL[m]} {100 * v:.1f}%" for m, v in fp.items())
            + ". The re-splits share the same users, so they are not independent of each other.",
        ]
    md = "\n".join(lines) + "\n"

    def html_table(h: list[str], rs: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(x)}</th>" for x in h)
        trs = "".join("<tr>" + "".join(f"<td>{_html_inline(x)}</td>" for x in r) + "</tr>" for r in rs)
        return f"<table border=1 cellpadding=4><tr>{th}</tr>{trs}</table>"

    body = [f"<h1>A/B report: {html.escape(exp.name)}</h1>", f"<p>{_html_inline(lines[2])}</p>", f"<p>{_html_inline(lines[3])}</p>",
            f"<p><b>{_html_inline(srm_line)}</b></p>", html_table(head, rows), "<p>" + _html_inline(lines[9]) + "</p>",
            html_table(chead, crows), '<p><img src="ab.png"></p>']
    if aa:
        body.append(f"<p>{_html_inline(lines[-1])}</p>")
    page = "<!doctype html><html><head><meta charset=utf-8><title>A/B " + html.escape(exp.name) + "</title></head><body>" + "".join(body) + "</body></html>"
    return md, page


def ab_report(settings: Any, name: str, out: Path, *, experiments_file: Path | None = None, eventlog_url: str | None = None,
              resalt: int = 0, log_to_mlflow: bool = True) -> tuple[Path, dict[str, Any]]:
    """Analyse experiment ``name`` from the event log; write ``out/report.{md,html,json}`` and
    ``ab.png``; log them (and the headline numbers) to MLflow. Returns (report path, result)."""
    if experiments_file is not None:
        exp = find_experiment(experiments_file, name, "--experiments-file")
    else:
        exp = find_experiment(settings.experiments.file, name)
    frames = read_frames(eventlog_url or settings.eventlog.url, experiment=name)
    if frames["impressions"].is_empty():
        raise UserError(f"the event log has no impressions for experiment {name!r} yet: is it running, and is traffic reaching it?")
    unknown = set(frames["impressions"]["variant"].drop_nulls().unique().to_list()) - set(exp.shares())
    if unknown:
        raise UserError(f"the log has variants {sorted(unknown)} that the experiments file does not define for {name!r}")
    units = per_unit(frames)
    result = analyze(units, exp.shares(), exp.control.name)
    counted = frames["feedback"].join(frames["items"].select("request_id", "item_id"), on=["request_id", "item_id"], how="semi").height
    imp = frames["impressions"]
    versions = {r["variant"]: f"{r['model']}, version {r['model_version']}" for r in imp.unique("variant").iter_rows(named=True)}
    extra = {"orphans": frames["feedback"].height - counted, "first": str(imp["ts"].min()), "last": str(imp["ts"].max()), "versions": versions}
    aa = resalt_check(units, exp, resalt) if resalt else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _chart(result, out)
    md, page = render(exp, result, extra, aa)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(page)
    payload = {
        "experiment": exp.name,
        "variants": result["variants"],
        "comparisons": {n: [c.__dict__ for c in comps] for n, comps in result["comparisons"].items()},
        "srm": result["srm"],
        "aa": aa,
        **extra,
    }
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    if log_to_mlflow:
        import mlflow

        from storerec.registry import tracking

        tracking.configure(settings.mlflow, kind="ab-report")
        with mlflow.start_run(run_name=f"ab-report {exp.name}"):
            mlflow.set_tag("kind", "ab-report")
            mlflow.log_params({"experiment": exp.name, "salt": exp.salt, "control": exp.control.name,
                               **{f"variant.{v.name}": f"{v.model} share={v.share}" for v in exp.variants}})
            for n, v in result["variants"].items():
                keys = ("users", "impressions", "clicks", "ctr", "conversion", "revenue_per_user")
                mlflow.log_metrics({f"{n}.{k}": float(v[k]) for k in keys if not math.isnan(float(v[k]))})
            for n, comps in result["comparisons"].items():
                for c in comps:
                    mlflow.log_metrics({f"{n}.{c.metric}.lift": c.diff, f"{n}.{c.metric}.p_value": c.p_value})
            mlflow.log_metric("srm.p_value", result["srm"]["p_value"])
            mlflow.log_artifacts(str(out), artifact_path="ab-report")
    return out / "report.md", payload
