"""``storerec bench-quality`` / ``make bench-quality``: storerec's defaults against tuned peers
called directly, on public data sets storerec was not tuned on (#13 item 8).

For each data set:

1. The raw files become storerec import files (:mod:`storerec.tools.quality_data`; MovieLens-100K
   through ``storerec import --movielens``), imported with the real CLI.
2. A **held-out test part** is cut off: MovieLens-100K per user the last 20 % by (time, item) (the
   issue-3 protocol); Last.fm (no timestamps) per user a seeded random 20 %; Online Retail the last
   30 days (a global cut, as production sees it). Relevant = the test part's relevant event types on
   items new to the user; users unknown to the train part are left out (warm users only).
3. The train part is imported into a fresh data folder, and the real CLI runs on it in a child
   process with its own MLflow store: ``storerec run`` (features, automatic search, train, register,
   champion), ``storerec tune --model M --register`` for the main models, and ``storerec
   recommend-batch`` for the test users of the champion and of each tuned version.
4. **Peers called directly** (implicit ALS, BPR and item-item, LightFM WARP, a numpy/scipy EASE):
   no storerec code in their fit or ranking. Each is tuned as a data scientist would, by a random
   search over its main parameters *and its input matrix* (binary, raw strength, log1p, BM25) on
   an inner split cut from the train part the same way, then refit on the whole train part.
5. Every list, storerec's and the peers', is scored by the same metric code on the same test part.
   The goal: ``run`` champion within 2 % (relative NDCG@10) of the best tuned peer, ``tune`` at or
   above the ``run`` champion.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from storerec.core.schema import Columns as C
from storerec.core.tables import markdown_table
from storerec.evaluation.metrics import calc_metrics
from storerec.evaluation.splitters import last_fraction_split, temporal_split
from storerec.tools.bench import machine
from storerec.tools.quality_data import CONVERTERS, DATASETS_DIR, available
from storerec.training.pipeline import relevant_pairs as validation_pairs

K = 10


@dataclass(frozen=True)
class QualitySet:
    name: str
    label: str
    relevant: tuple[str, ...]
    holdout: str  # "last_fraction" | "random_fraction" | "temporal:<days>"
    source: str


SETS: dict[str, QualitySet] = {
    "ml100k": QualitySet("ml100k", "MovieLens-100K (ratings, 943 x 1,682)", ("rating",), "last_fraction",
                         "../shared/data/ml-100k (storerec import --movielens)"),
    "lastfm": QualitySet("lastfm", "Last.fm HetRec 2011 (play counts, no time)", ("purchase",), "random_fraction",
                         "user_artists.dat: plays as purchase events, quantity = play count"),
    "online_retail": QualitySet("online_retail", "UCI Online Retail (transactions 2010-12..2011-12)", ("purchase",), "temporal:30",
                         "one purchase event per invoice line, quantity and price"),
}


# ---- the held-out part ---------------------------------------------------------------------------

def holdout(events: pl.DataFrame, how: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    if how == "last_fraction":
        return last_fraction_split(events, 0.2)
    if how == "random_fraction":
        return last_fraction_split(events, 0.2, shuffle=True)
    if how.startswith("temporal:"):
        days = int(how.split(":")[1])
        last = events[C.Timestamp].max()
        assert isinstance(last, datetime)
        return temporal_split(events, last - timedelta(days=days))
    raise ValueError(f"unknown holdout {how!r}")


def relevant_pairs(train: pl.DataFrame, test: pl.DataFrame, types: tuple[str, ...]) -> pl.DataFrame:
    """Test pairs of relevant types on items new to a user the train part knows (storerec's
    validation rule, :func:`storerec.training.pipeline.relevant_pairs`, for warm users only)."""
    return validation_pairs(train, test, types).join(train.select(C.User).unique(), on=C.User, how="semi")


def score(reco: pl.DataFrame, relevant: pl.DataFrame, train: pl.DataFrame, n_items: int) -> dict[str, float]:
    return calc_metrics(reco.select(C.User, C.Item, "rank"), relevant, train, k=K, n_catalogue=n_items)


# ---- the real CLI in a child process ---------------------------------------------------------------

class Cli:
    """``python -m storerec.cli`` in ``cwd`` (its own ./mlruns), timed; output kept in a log."""

    def __init__(self, cwd: Path, log: Path, quiet: bool) -> None:
        self.cwd, self.log, self.quiet = cwd, log, quiet

    def __call__(self, *args: str) -> tuple[str, float]:
        cmd = [sys.executable, "-m", "storerec.cli", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        t0 = time.perf_counter()
        with self.log.open("a") as log:  # progress (stderr) goes to the log as it happens
            log.write(f"$ storerec {' '.join(args)}\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            seconds = time.perf_counter() - t0
            log.write(f"{proc.stdout}# {seconds:.1f} s, exit {proc.returncode}\n\n")
        if proc.returncode != 0:
            raise RuntimeError(f"storerec {' '.join(args)} failed ({proc.returncode}); see {self.log}")
        if not self.quiet:
            print(f"[bench-quality]   storerec {' '.join(args[:3])} ... {seconds:.0f} s", file=sys.stderr, flush=True)
        return proc.stdout, seconds


# ---- peers called directly ---------------------------------------------------------------------------

@dataclass
class Matrix:
    users: list[str]
    items: list[str]
    raw: sp.csr_matrix  # summed strength (rating value, quantity; 1 per event otherwise)

    def weighted(self, kind: str) -> sp.csr_matrix:
        from implicit.nearest_neighbours import bm25_weight

        m = self.raw.copy().astype(np.float32)
        if kind == "binary":
            m.data[:] = 1.0
        elif kind == "log1p":
            m.data = np.log1p(m.data).astype(np.float32)
        elif kind == "bm25":
            m = bm25_weight(m, K1=100, B=0.8).tocsr().astype(np.float32)
        elif kind != "raw":
            raise ValueError(kind)
        return m


def build_matrix(train: pl.DataFrame, items: list[str]) -> Matrix:
    """User x item sums of the events' strength: ``value`` where present (ratings), else
    ``quantity`` (plays, units), else 1."""
    strength = pl.lit(1.0)
    if C.Quantity in train.columns:
        strength = pl.col(C.Quantity).cast(pl.Float64).fill_null(1.0)
    if C.Value in train.columns:
        strength = pl.coalesce(pl.col(C.Value).cast(pl.Float64), strength)
    agg = train.with_columns(strength.clip(lower_bound=0.0).alias("_s")).group_by(C.User, C.Item).agg(pl.col("_s").sum())
    users = sorted(agg[C.User].unique().to_list())
    uix = {u: i for i, u in enumerate(users)}
    iix = {it: i for i, it in enumerate(items)}
    rows = np.fromiter((uix[u] for u in agg[C.User]), np.int64, agg.height)
    cols = np.fromiter((iix[i] for i in agg[C.Item]), np.int64, agg.height)
    vals = agg["_s"].to_numpy().astype(np.float32)
    vals[vals <= 0] = 1.0  # a zero-strength row is still an interaction
    return Matrix(users, items, sp.csr_matrix((vals, (rows, cols)), shape=(len(users), len(items))))


def _lists(ids: np.ndarray, users: list[str], items: list[str]) -> pl.DataFrame:
    n = ids.shape[1]
    return pl.DataFrame({
        C.User: np.repeat(np.array(users, dtype=object), n).tolist(),
        C.Item: np.array(items, dtype=object)[ids.ravel()].tolist(),
        "rank": np.tile(np.arange(1, n + 1), len(users)),
    })


def _top_from_scores(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32)
    r, c = seen.nonzero()
    scores[r, c] = -np.inf
    part = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def peer_lists(peer: str, params: dict[str, Any], m: Matrix, users: list[str]) -> pl.DataFrame:
    """Fit ``peer`` on ``m`` and return top-K lists for ``users`` (train items excluded)."""
    from threadpoolctl import threadpool_limits

    uix = {u: i for i, u in enumerate(m.users)}
    users = [u for u in users if u in uix]
    rows = np.array([uix[u] for u in users], dtype=np.int64)
    x = m.weighted(params.get("input", "binary"))
    seen = m.raw[rows]
    if peer == "implicit-als":
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=params["factors"], regularization=params["regularization"],
                                            alpha=params["alpha"], iterations=15, random_state=42)
            model.fit(x, show_progress=False)
        ids, _ = model.recommend(rows, x[rows], N=K, filter_already_liked_items=True)
    elif peer == "implicit-bpr":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(factors=params["factors"], learning_rate=params["learning_rate"],
                                            regularization=params["regularization"], iterations=params["iterations"], random_state=42)
        model.fit(x, show_progress=False)
        ids, _ = model.recommend(rows, x[rows], N=K, filter_already_liked_items=True)
    elif peer == "implicit-itemknn":
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

        klass = {"cosine": CosineRecommender, "bm25": BM25Recommender, "tfidf": TFIDFRecommender}[params["similarity"]]
        model = klass(K=params["neighbours"])
        model.fit(x, show_progress=False)
        ids, _ = model.recommend(rows, x[rows], N=K, filter_already_liked_items=True)
    elif peer == "lightfm-warp":
        from lightfm import LightFM

        model = LightFM(no_components=params["no_components"], loss="warp", learning_rate=params["learning_rate"], random_state=42)
        model.fit(x.tocoo(), epochs=params["epochs"], num_threads=2)
        scores = np.empty((len(rows), len(m.items)), dtype=np.float32)
        all_items = np.arange(len(m.items), dtype=np.int32)
        for j, u in enumerate(rows):
            scores[j] = model.predict(int(u), all_items, num_threads=2)
        ids = _top_from_scores(scores, seen)
    elif peer == "ease":
        b = _ease_weights(x, params["regularization"])
        ids = np.concatenate([_top_from_scores((x[rows[i:i + 512]] @ b), seen[i:i + 512]) for i in range(0, len(rows), 512)])
    else:
        raise ValueError(peer)
    return _lists(np.asarray(ids), users, m.items)


_GRAM: dict[str, np.ndarray] = {}


def _ease_weights(x: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019) by its closed form with scipy's LAPACK: B = I - P / diag(P), P = (G + lam I)^-1,
    the inverse by a float32 Cholesky factorisation (``spotrf`` + ``spotri``); the Gram matrix of one
    input is computed once and reused across lambdas (as anyone tuning EASE would)."""
    import hashlib

    from scipy.linalg import lapack

    h = hashlib.sha1(np.int64(x.shape[0]).tobytes())
    for arr in (x.indptr, x.indices, x.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    key = h.hexdigest()
    if key not in _GRAM:
        _GRAM.clear()
        _GRAM[key] = (x.T @ x).toarray().astype(np.float32)
    g = _GRAM[key].copy()
    g[np.diag_indices_from(g)] += lam
    c, info = lapack.spotrf(g, lower=True, overwrite_a=True, clean=False)
    assert info == 0, f"spotrf failed ({info})"
    p, info = lapack.spotri(c, lower=True, overwrite_c=True)
    assert info == 0, f"spotri failed ({info})"
    p = np.tril(p) + np.tril(p, -1).T
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


INPUTS = ["binary", "raw", "log1p", "bm25"]
PEER_SPACES: dict[str, dict[str, list[Any]]] = {
    "implicit-als": {"factors": [32, 64, 128, 256], "regularization": [0.01, 0.1, 1.0, 10.0, 30.0],
                     "alpha": [1.0, 5.0, 10.0, 20.0, 40.0], "input": INPUTS},
    "implicit-bpr": {"factors": [64, 128], "learning_rate": [0.01, 0.05, 0.1], "regularization": [0.001, 0.01, 0.1],
                     "iterations": [100, 200], "input": ["binary"]},
    "implicit-itemknn": {"similarity": ["cosine", "bm25", "tfidf"], "neighbours": [20, 50, 100, 200, 400], "input": ["binary", "raw"]},
    "lightfm-warp": {"no_components": [32, 64, 128], "learning_rate": [0.01, 0.05, 0.1], "epochs": [10, 30, 50], "input": ["binary", "raw"]},
    "ease": {"regularization": [50.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0], "input": ["binary"]},
}


def _draws(space: dict[str, list[Any]], trials: int, seed: int) -> list[dict[str, Any]]:
    import itertools

    keys = list(space)
    combos = [dict(zip(keys, v)) for v in itertools.product(*(space[k] for k in keys))]
    random.Random(seed).shuffle(combos)
    return combos[:trials]


def tune_peer(peer: str, train: pl.DataFrame, items: list[str], qs: QualitySet, trials: int,
              log: Callable[[str], None]) -> tuple[dict[str, Any], float]:
    """Random search of ``trials`` settings (all of them when the space is smaller), scored on an
    inner split cut from ``train`` as the test part was cut from all events."""
    inner_train, inner_test = holdout(train, qs.holdout)
    rel = relevant_pairs(inner_train, inner_test, qs.relevant)
    m = build_matrix(inner_train, items)
    users = rel[C.User].unique().to_list()
    best: tuple[dict[str, Any], float] = ({}, -1.0)
    for params in _draws(PEER_SPACES[peer], trials, seed=0):
        value = score(peer_lists(peer, params, m, users), rel, inner_train, len(items))[f"ndcg@{K}"]
        if value > best[1]:
            best = (params, value)
    log(f"{peer}: best of {min(trials, _space_size(peer))} on the inner split: ndcg@{K}={best[1]:.4f} {best[0]}")
    return best


def _space_size(peer: str) -> int:
    return int(np.prod([len(v) for v in PEER_SPACES[peer].values()]))


# ---- one data set ----------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    metrics: dict[str, float]
    seconds: float
    note: str = ""


def _import_files(qs: QualitySet, raw: Path | None, work: Path, cli: Cli, ml_dir: Path) -> Path:
    full = work / "full"
    if qs.name == "ml100k":
        cli("import", "--movielens", str(ml_dir), "--data-dir", str(full), "--replace")
        return full
    files = work / "files"
    files.mkdir(parents=True, exist_ok=True)
    assert raw is not None
    CONVERTERS[qs.name](raw, files)
    args = ["import", "--events", str(files / "events.csv"), "--items", str(files / "items.csv"), "--data-dir", str(full), "--replace"]
    cli(*args)
    return full


def run_set(qs: QualitySet, raw: Path | None, out: Path, ml_dir: Path, *, tune_models: list[str], tune_trials: int,
            peer_trials: int, quiet: bool) -> dict[str, Any]:
    from storerec.training.pipeline import Tables

    work = out / qs.name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cli = Cli(work, work / "cli.log", quiet)

    def log(msg: str) -> None:
        if not quiet:
            print(f"[bench-quality] {qs.name}: {msg}", file=sys.stderr, flush=True)

    full = _import_files(qs, raw, work, cli, ml_dir)
    tables = Tables.load(full)
    train, test = holdout(tables.events, qs.holdout)
    rel = relevant_pairs(train, test, qs.relevant)
    items = sorted(tables.items[C.Item].to_list())
    test_users = rel[C.User].unique().sort()
    shape = {"users": tables.events[C.User].n_unique(), "items": len(items), "events": tables.events.height,
             "train_events": train.height, "test_users": test_users.len(), "test_pairs": rel.height}
    log(f"{shape}")
    # the train part as the user's data folder, imported with the CLI
    files = work / "train-files"
    files.mkdir()
    train.write_parquet(files / "events.parquet")
    tables.items.write_parquet(files / "items.parquet")
    args = ["import", "--events", str(files / "events.parquet"), "--items", str(files / "items.parquet")]
    if tables.users is not None:
        tables.users.write_parquet(files / "users.parquet")
        args += ["--users", str(files / "users.parquet")]
    cli(*args, "--data-dir", "data")
    pl.DataFrame({C.User: test_users}).write_csv(work / "test-users.csv")
    rows: list[Row] = []

    def served(ref: str, label: str, seconds: float, note: str = "") -> Row:
        out_file = work / f"lists-{ref}.parquet"
        cli("recommend-batch", "--model", ref, "--users", "test-users.csv", "--k", str(K), "--out", out_file.name, "--data-dir", "data")
        row = Row(label, score(pl.read_parquet(out_file), rel, train, len(items)), seconds, note)
        log(f"{label}: ndcg@{K}={row.metrics[f'ndcg@{K}']:.4f}")
        return row

    stdout, seconds = cli("run", "--data-dir", "data")
    champ = re.search(r"^champion: (\w+) \(version (\d+)", stdout, re.M)
    assert champ, f"no champion line in `storerec run` output; see {cli.log}"
    rows.append(served(champ.group(2), f"storerec run champion ({champ.group(1)})", seconds, _searched(stdout, champ.group(1))))
    tuned: list[tuple[float, Row]] = []
    for name in tune_models:
        stdout, seconds = cli("tune", "--model", name, "--trials", str(tune_trials), "--register", "--data-dir", "data")
        version = re.search(r"best registered as version (\d+)", stdout)
        best = re.search(r"best ndcg@\d+=([0-9.]+) with (.*)$", stdout, re.M)
        assert version and best, f"unexpected `storerec tune` output; see {cli.log}"
        row = served(version.group(1), f"storerec tune {name}", seconds, best.group(2))
        tuned.append((float(best.group(1)), row))
    pick = max(tuned, key=lambda t: t[0])[1]
    rows.extend(r for _, r in tuned)
    peers: list[Row] = []
    for peer in PEER_SPACES:
        t0 = time.perf_counter()
        params, _ = tune_peer(peer, train, items, qs, peer_trials, log)
        lists = peer_lists(peer, params, build_matrix(train, items), test_users.to_list())
        row = Row(f"{peer} direct, tuned", score(lists, rel, train, len(items)), time.perf_counter() - t0, json.dumps(params))
        log(f"{row.label}: ndcg@{K}={row.metrics[f'ndcg@{K}']:.4f}")
        peers.append(row)
    rows.extend(peers)
    best_peer = max(peers, key=lambda r: r.metrics[f"ndcg@{K}"])
    return {"set": qs, "shape": shape, "rows": rows, "run": rows[0], "tune": pick, "best_peer": best_peer}


def _searched(stdout: str, model: str) -> str:
    m = re.search(rf"^{model}: .*\n.*\n  parameters: (.*)$", stdout, re.M)
    return m.group(1) if m else ""


def _rel(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f} %" if b else ""


def bench_quality(ml_dir: Path, out: Path, *, sets: list[str], tune_models: list[str], tune_trials: int, peer_trials: int,
                  quiet: bool = False) -> str:
    raw_dirs = available()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, missing = [], []
    for name in sets:
        qs = SETS[name]
        if name != "ml100k" and name not in raw_dirs:
            missing.append(f"{name}: no raw files under {DATASETS_DIR / name / 'raw'} (see storerec/tools/quality_data.py)")
            continue
        results.append(run_set(qs, raw_dirs.get(name), out, ml_dir, tune_models=tune_models, tune_trials=tune_trials,
                               peer_trials=peer_trials, quiet=quiet))
    info = machine()
    nd = f"ndcg@{K}"
    lines = [f"Quality on stranger data: NDCG@{K} etc. on each set's held-out test part; {info['cpu']}, {info['cores']} cores, "
             f"{info['memory_gib']} GiB, Python {info['python']}, {info['date']}.", ""]
    summary = []
    for r in results:
        summary.append([r["set"].label, f"{r['shape']['users']:,} x {r['shape']['items']:,}, {r['shape']['events']:,} events",
                        f"{r['run'].metrics[nd]:.4f} ({r['run'].label.split('(')[-1].rstrip(')')})",
                        f"{r['tune'].metrics[nd]:.4f} ({r['tune'].label.split()[-1]})",
                        f"{r['best_peer'].metrics[nd]:.4f} ({r['best_peer'].label.split()[0]})",
                        _rel(r["run"].metrics[nd], r["best_peer"].metrics[nd]), _rel(r["tune"].metrics[nd], r["run"].metrics[nd])])
    lines.append(markdown_table(["data set", "shape", "run champion", "tune best", "best tuned peer", "run vs peer", "tune vs run"],
                                summary, align="llrrrrr"))
    for r in results:
        qs = r["set"]
        lines += ["", f"### {qs.label}", "",
                  f"Source: {qs.source}; held out: {qs.holdout}; relevant: {', '.join(qs.relevant)} on items new to the user; "
                  f"{r['shape']['test_users']:,} test users, {r['shape']['test_pairs']:,} pairs; "
                  f"train part {r['shape']['train_events']:,} events.", ""]
        lines.append(markdown_table(
            ["model", f"NDCG@{K}", f"P@{K}", f"recall@{K}", f"coverage@{K}", "seconds", "parameters"],
            [[row.label, f"{row.metrics[nd]:.4f}", f"{row.metrics[f'precision@{K}']:.4f}", f"{row.metrics[f'recall@{K}']:.4f}",
              f"{row.metrics[f'coverage@{K}']:.3f}", f"{row.seconds:.0f}", row.note.replace("|", "/")] for row in r["rows"]],
            align="lrrrrrl"))
    if missing:
        lines += ["", "Not run: " + "; ".join(missing)]
    payload = [{"set": r["set"].name, "shape": r["shape"],
                "rows": [{"label": x.label, "seconds": x.seconds, "note": x.note, **x.metrics} for x in r["rows"]]} for r in results]
    (out / "bench-quality.json").write_text(json.dumps({"machine": info, "results": payload}, indent=2, default=str))
    text = "\n".join(lines)
    (out / "bench-quality.md").write_text(text + "\n")
    return text
