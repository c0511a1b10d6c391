"""Which candidate may be crowned: paired confidence intervals over the same validation users.

Every candidate is scored on the same test users (a user without recommendations scores 0), so
the comparison is paired: for the best candidate by mean and each other one, the per-user
differences give a mean and a normal-approximation confidence interval (the users are the
sampling unit). A candidate whose interval against the best includes 0 is *tied* with it: the
validation data cannot tell them apart. :func:`pick_champion` then keeps the previous champion
when it is among the tied, else takes the tied candidate the prior ranks first (a stronger model
family before popularity), and says why.
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
    per_user: Mapping[str, np.ndarray], prior: Sequence[str], previous: str | None = None, z: float = Z_95
) -> Decision:
    """The champion among ``per_user`` candidates (name -> per-user metric over the same users).

    ``previous``: the model of the current champion, if it is among the candidates. ``prior``: model
    names, strongest first (names not listed rank after the listed ones, in mean order)."""
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
    rank = {name: i for i, name in enumerate(prior)}
    chosen = min(tied, key=lambda n: (rank.get(n, len(rank)), -means[n]))
    return Decision(chosen, best, tied, diffs, f"the validation data cannot separate {best} from {listing}; "
                    f"{chosen} is crowned as the first of them in training.model_prior")
