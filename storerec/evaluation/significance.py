"""Which candidate may be crowned: paired confidence intervals over the same validation users.

Every candidate is scored on the same test users (a user without recommendations scores 0), so
the comparison is paired: for the best candidate by mean and each other one, the per-user
differences give a mean and a normal-approximation confidence interval (the users are the
sampling unit). A candidate whose interval against the best includes 0 is *tied* with it: the
validation data cannot tell them apart. :func:`pick_champion` then keeps the previous champion
when it is among the tied (no churn on noise), else, by ``tie_break``:

- ``prior`` (the default): the tied candidate the fixed prior ranks first.
- ``mean``: the tied personalised candidate with the best mean; a non-personalised baseline
  (``baselines``: popularity) is crowned only when no personalised model is tied with it. The
  point estimate of a tie chases noise: on UCI Online Retail it crowned a LightFM that scored
  0.074 on the held-out month where the prior's ALS scored 0.097 (docs/benchmarks.md).

``storerec run`` first adds evidence from older windows (``training.tie_windows``,
storerec/training/chain.py) and calls this again on the pooled scores.
Either way the decision says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Difference:
    """Mean per-user difference ``best - other`` with its confidence interval."""

    other: str
    mean: float
    low: float
    high: float
    n_users: int

    @property
    def separated(self) -> bool:
        return self.low > 0

    def text(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def paired_difference(best: np.ndarray, other: np.ndarray, other_name: str, z: float = Z_95) -> Difference:
    """Mean of ``best - other`` over users and its two-sided interval at ``z`` standard errors."""
    if best.shape != other.shape:
        raise ValueError(f"per-user scores differ in length: {best.shape} vs {other.shape}")
    d = np.asarray(best, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else 0.0
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Difference(other_name, mean, mean - z * se, mean + z * se, n)


@dataclass(frozen=True)
class Decision:
    champion: str  # the candidate to crown (or the previous champion's name when it stays)
    best: str  # best by mean
    tied: tuple[str, ...]  # candidates the data cannot separate from the best (the best included)
    differences: tuple[Difference, ...]  # best against each other candidate
    reason: str


def pick_champion(
    per_user: Mapping[str, np.ndarray],
    prior: Sequence[str],
    previous: str | None = None,
    z: float = Z_95,
    *,
    tie_break: str = "prior",
    baselines: Sequence[str] = ("popularity",),
) -> Decision:
    """The champion among ``per_user`` candidates (name -> per-user metric over the same users).

    ``previous``: the model of the current champion, if it is among the candidates. ``prior``: model
    names, strongest first (names not listed rank after the listed ones, in mean order), used when
    ``tie_break`` is ``prior``. ``baselines``: non-personalised models that lose ties to
    personalised ones under ``tie_break = mean``."""
    if tie_break not in ("mean", "prior"):
        raise ValueError(f"tie_break must be 'mean' or 'prior', not {tie_break!r}")
    if not per_user:
        raise ValueError("no candidates")
    means = {name: float(np.mean(v)) if len(v) else 0.0 for name, v in per_user.items()}
    best = max(means, key=lambda n: (means[n], -list(per_user).index(n)))
    diffs = tuple(paired_difference(per_user[best], per_user[o], o, z) for o in per_user if o != best)
    tied = (best, *(d.other for d in diffs if not d.separated))
    if len(tied) == 1:
        return Decision(best, best, tied, diffs, f"{best} is better than every other candidate beyond chance (95% CI of the per-user difference above 0)")
    listing = ", ".join(f"{d.other} {d.text()}" for d in diffs if d.other in tied)
    if previous in tied:
        return Decision(previous, best, tied, diffs, f"the validation data cannot separate {best} from {listing}; "
                        f"the previous champion's model ({previous}) is among them and stays champion")
    if tie_break == "mean":
        chosen = min(tied, key=lambda n: (n in baselines, -means[n]))
        why = ("the best validation mean among them" if chosen == best
               else f"the best validation mean among them that is not a baseline ({', '.join(baselines)})")
        return Decision(chosen, best, tied, diffs, f"the validation data cannot separate {best} from {listing}; "
                        f"{chosen} is crowned as {why} (training.tie_break = mean)")
    rank = {name: i for i, name in enumerate(prior)}
    chosen = min(tied, key=lambda n: (rank.get(n, len(rank)), -means[n]))
    return Decision(chosen, best, tied, diffs, f"the validation data cannot separate {best} from {listing}; "
                    f"{chosen} is crowned as the first of them in training.model_prior (training.tie_break = prior)")


BOOTSTRAP_CELLS = 4_000_000  # resampled values held at once (users x resamples per batch): ~32 MB


def paired_bootstrap(
    candidate: np.ndarray, reference: np.ndarray, reference_name: str, *, samples: int = 2000, confidence: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Mean per-user difference ``candidate - reference`` and its paired bootstrap interval.

    The users are the sampling unit: each of ``samples`` resamples draws the validation users with
    replacement (both scores of a drawn user together, so the pairing is kept) and takes the mean
    difference; the interval is the two-sided percentile interval at ``confidence``
    (:func:`scipy.stats.bootstrap`, ``method="percentile"``). Unlike :func:`paired_difference` it
    assumes no normal shape, which matters for NDCG: most users score 0 and a few score high.
    Deterministic for ``seed``. When every user's difference is the same (e.g. two identical
    models) the interval is that value."""
    from scipy.stats import bootstrap

    if candidate.shape != reference.shape:
        raise ValueError(f"per-user scores differ in length: {candidate.shape} vs {reference.shape}")
    d = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else 0.0
    if n < 2:  # nothing to resample: no evidence either way
        return Difference(reference_name, mean, -math.inf, math.inf, n)
    if float(d.max() - d.min()) == 0.0:  # every resample has the same mean
        return Difference(reference_name, mean, mean, mean, n)
    res = bootstrap((d,), np.mean, n_resamples=samples, batch=max(1, BOOTSTRAP_CELLS // n), vectorized=True,
                    confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return Difference(reference_name, mean, float(res.confidence_interval.low), float(res.confidence_interval.high), n)
