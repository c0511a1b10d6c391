"""Benchmarks for the offline jobs (``storerec bench`` / ``make bench``).

Each figure is the median of several runs of the real command line in a child process, so
the peak memory is that process's own maximum resident set size (from ``wait4``), and the
seconds include interpreter start-up: what a user waits for.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storerec.core.tables import markdown_table


def _storerec_cmd() -> list[str]:
    return [sys.executable, "-m", "storerec.cli"]


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB). Raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return seconds, usage.ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def _median_runs(name: str, cmd: list[str], repeats: int, quiet: bool) -> dict[str, Any]:
    runs = []
    for i in range(repeats):
        seconds, rss = measure(cmd)
        runs.append((seconds, rss))
        if not quiet:
            print(f"[bench] {name} run {i + 1}/{repeats}: {seconds:.1f}s, peak {rss:.0f} MiB", file=sys.stderr, flush=True)
    return {
        "name": name,
        "seconds_median": statistics.median(r[0] for r in runs),
        "peak_rss_mib_median": statistics.median(r[1] for r in runs),
        "runs": runs,
    }


def run_benchmarks(settings: Any, *, n_events: int, repeats: int, out: Path, quiet: bool = False) -> str:
    """Simulate a store of ``n_events`` events and build its profiles, ``repeats`` times each.

    Users and items scale with the events as in the default store (60 events per user,
    150 events per item). Returns a Markdown table; also writes ``out/bench-offline.json``.
    """
    out = Path(out)
    data_dir = out / f"store-{n_events}"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    n_users = max(100, n_events // 60)
    n_items = max(200, n_events // 150)
    base = _storerec_cmd() + ["-q"]
    sim_cmd = base + [
        "simulate", "--events", str(n_events), "--users", str(n_users), "--items", str(n_items),
        "--data-dir", str(data_dir), "--force",
    ]
    results = [_median_runs(f"simulate {n_events:,} events", sim_cmd, repeats, quiet)]
    results.append(_median_runs(f"features on {n_events:,} events", base + ["features", "--data-dir", str(data_dir)], repeats, quiet))
    info = machine()
    payload = {"machine": info, "n_events": n_events, "n_users": n_users, "n_items": n_items, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-offline.json").write_text(json.dumps(payload, indent=2))
    lines = [
        f"Offline jobs, {n_events:,} events / {n_users:,} users / {n_items:,} items; "
        f"median of {repeats} runs; {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
        f"Python {info['python']}, {info['date']}",
        "",
        markdown_table(
            ["job", "seconds (median)", "peak RSS MiB (median)"],
            [[r["name"], f"{r['seconds_median']:.1f}", f"{r['peak_rss_mib_median']:.0f}"] for r in results],
            align="lrr",
        ),
    ]
    return "\n".join(lines)


# ---- models on MovieLens-100K -----------------------------------------------------------------

ML_REFERENCE = {  # published by other libraries on exactly this protocol (issue #3); not measured here
    "EASE (lambda=500)": (0.195, 0.170),
    "LightFM WARP (64 comps, 30 epochs)": (0.184, 0.158),
    "implicit ALS (64 f, 15 it)": (0.171, 0.151),
    "popularity": (0.116, 0.105),
}


def _ml_settings(settings: Any) -> Any:
    from storerec.core.schema import EventTypes

    s = settings.model_copy(deep=True)
    s.training.split = "last_fraction"
    s.training.test_fraction = 0.2
    s.training.relevant_event_types = [EventTypes.Rating]
    s.training.k = 10
    return s


def _direct_library_rows(split: Any, tables: Any, settings: Any) -> list[tuple[str, dict[str, float], float]]:
    """implicit ALS and LightFM called directly (no storerec code in the fit or the ranking)."""
    import numpy as np
    import polars as pl
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from lightfm import LightFM
    from threadpoolctl import threadpool_limits

    from storerec.evaluation.metrics import calc_metrics

    train = split.train
    users = sorted(train["user_id"].unique().to_list())
    items = sorted(tables.items["item_id"].to_list())
    uix = {u: i for i, u in enumerate(users)}
    iix = {it: i for i, it in enumerate(items)}
    pairs = train.select("user_id", "item_id").unique()
    rows = np.array([uix[u] for u in pairs["user_id"]])
    cols = np.array([iix[i] for i in pairs["item_id"]])
    mat = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items)))
    test_users = split.test["user_id"].unique().to_list()
    tu = np.array([uix[u] for u in test_users])
    out = []

    def to_frame(ids: np.ndarray) -> pl.DataFrame:
        n = ids.shape[1]
        return pl.DataFrame(
            {
                "user_id": np.repeat(np.array(test_users, dtype=object), n).tolist(),
                "item_id": np.array(items, dtype=object)[ids.ravel()].tolist(),
                "rank": np.tile(np.arange(1, n + 1), len(test_users)),
            }
        )

    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=64, iterations=15, random_state=42)
        als.fit(mat, show_progress=False)
    fit = time.perf_counter() - t0
    ids, _ = als.recommend(tu, mat[tu], N=10, filter_already_liked_items=True)
    out.append(("implicit ALS direct (64 f, 15 it)", calc_metrics(to_frame(ids), split.test, train, k=10, n_catalogue=len(items)), fit))

    t0 = time.perf_counter()
    lfm = LightFM(no_components=64, loss="warp", learning_rate=0.05, random_state=42)
    lfm.fit(mat, epochs=30, num_threads=2)
    fit = time.perf_counter() - t0
    scores = np.stack([lfm.predict(int(u), np.arange(len(items)), num_threads=2) for u in tu])
    scores[mat[tu].nonzero()] = -np.inf
    ids = np.argsort(-scores, axis=1)[:, :10]
    out.append(("LightFM WARP direct (64 comps, 30 epochs)", calc_metrics(to_frame(ids), split.test, train, k=10, n_catalogue=len(items)), fit))
    return out


def _tune_on_validation(settings: Any, tables: Any, name: str, trials: int) -> dict[str, Any]:
    """Best params by NDCG@10 on a validation split carved out of the *train* part (the test
    users' last 20% stay unseen), so the tuned rows are honest."""
    from storerec.training.pipeline import Tables, make_split, train_and_evaluate
    from storerec.training.tune import candidates

    inner_tables = Tables(tables.events, tables.items, tables.users, tables.fingerprint + "-inner")
    inner = make_split(inner_tables, settings.training)
    best, best_score, cached = {}, -1.0, None
    for params in candidates(name, trials, seed=0, grid=False):
        res = train_and_evaluate(settings, inner_tables, inner, name, params, cached)
        cached = res.prepared
        if res.metrics["ndcg@10"] > best_score:
            best, best_score = params, res.metrics["ndcg@10"]
    return best


def ml100k_benchmark(settings: Any, ml_dir: Path, out: Path, *, trials: int = 20, repeats: int = 5, quiet: bool = False) -> str:
    """Every storerec model on the ML-100K protocol, the libraries called directly in the same
    run, tuned rows (tuned on a validation split of train), and ALS fit overhead."""
    import numpy as np

    from storerec.core.progress import Progress
    from storerec.features.importer import import_movielens
    from storerec.models.als import ALSModel
    from storerec.training.pipeline import Tables, make_split, model_spec, prepare, train_and_evaluate

    progress = Progress("bench-ml100k", quiet=quiet)
    s = _ml_settings(settings)
    data_dir = Path(out) / "ml100k"
    import_movielens(s, Path(ml_dir), data_dir, quarantine=False, max_report=5, progress=Progress("import", quiet=True), mode="replace")
    tables = Tables.load(data_dir)
    split = make_split(tables, s.training)
    # the inner (tuning) split works on the outer train events only
    train_tables = Tables(split.train, tables.items, tables.users, tables.fingerprint)
    rows: list[tuple[str, dict[str, float], float]] = []
    plain: list[tuple[str, str, dict[str, Any]]] = [
        ("popularity", "popularity", {}),
        ("itemknn (cosine, K=50)", "itemknn", {"similarity": "cosine"}),
        ("ALS (64 f, 15 it)", "als", {"factors": 64, "iterations": 15}),
        ("BPR (64 f)", "bpr", {}),
        ("LightFM WARP (64, 30 epochs, features)", "lightfm", {}),
        ("LightFM WARP (64, 30 epochs, no features)", "lightfm", {"use_user_features": False, "use_item_features": False}),
        ("EASE (lambda=500)", "ease", {"regularization": 500.0, "weighted_history": False}),
    ]
    cached = None
    for label, name, params in plain:
        with progress.step(label):
            res = train_and_evaluate(s, tables, split, name, params, cached)
            cached = res.prepared
            rows.append((label, res.metrics, res.seconds["fit"]))
    for name in ("als", "lightfm", "ease", "itemknn"):
        with progress.step(f"tune {name} ({trials} trials on a validation split of train)"):
            best = _tune_on_validation(s, train_tables, name, trials)
            res = train_and_evaluate(s, tables, split, name, best, cached)
            rows.append((f"{name} tuned {best}", res.metrics, res.seconds["fit"]))
    with progress.step("libraries called directly"):
        rows.extend(_direct_library_rows(split, tables, s))

    # ALS fit overhead: storerec's ALSModel.fit vs implicit on the same matrix, same params
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    _, inter = model_spec(s, "als", {})
    ds = prepare(split.train, tables, s, split.as_of, inter, cached).dataset
    ours, direct = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ALSModel(factors=64, iterations=15).fit(ds)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with threadpool_limits(1, "blas"):
            AlternatingLeastSquares(factors=64, iterations=15, random_state=42).fit(ds.interactions, show_progress=False)
        direct.append(time.perf_counter() - t0)
    ratio = statistics.median(ours) / statistics.median(direct)

    info = machine()
    payload = {
        "machine": info,
        "rows": [{"model": r[0], "fit_seconds": r[2], **r[1]} for r in rows],
        "als_overhead": {"storerec_s": ours, "implicit_s": direct, "ratio_of_medians": ratio},
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "bench-ml100k.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = [
        f"MovieLens-100K, every rating a positive, per-user last 20% by (timestamp, item_id) as test "
        f"(floor, at least 1), all items ranked excluding the user's train items, k=10. "
        f"{info['cpu']}, {info['cores']} cores, {info['date']}.",
        "",
        markdown_table(
            ["model", "NDCG@10", "P@10", "recall@10", "MAP@10", "coverage@10", "fit s"],
            [
                *(
                    [label, f"{m['ndcg@10']:.4f}", f"{m['precision@10']:.4f}", f"{m['recall@10']:.4f}", f"{m['map@10']:.4f}",
                     f"{m['coverage@10']:.3f}", f"{fit:.2f}"]
                    for label, m, fit in rows
                ),
                *([f"reference (published): {label}", f"{ndcg:.3f}", f"{prec:.3f}", "", "", "", ""] for label, (ndcg, prec) in ML_REFERENCE.items()),
            ],
            align="l" + "r" * 6,
        ),
    ]
    lines += [
        "",
        f"ALS fit overhead ({repeats} runs, 64 f, 15 it): storerec median {statistics.median(ours):.3f}s, "
        f"implicit direct median {statistics.median(direct):.3f}s, ratio {ratio:.2f}x",
    ]
    del np
    return "\n".join(lines)
