"""Frozen data containers the models train on: id maps, the interaction matrix, features.

External ids are strings; models see contiguous integer indices. The catalogue (every item of
the items table, including items nobody has touched yet) defines the item index, so new items
get a column and can be scored from their features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from storerec.core.formulas import DEFAULT_EVENT_STRENGTH, DEFAULT_EVENT_WEIGHTS, event_strength
from storerec.core.schema import CATEGORY_SEP, Columns
from storerec.core.settings import EventStrength, default_event_strength

C = Columns


@dataclass(frozen=True)
class IdMap:
    """External string ids <-> internal indices 0..n-1 (in the order given)."""

    external: np.ndarray  # dtype object (str)
    _index: dict[str, int] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_values(cls, values: Iterable[str]) -> IdMap:
        ext = np.asarray(list(dict.fromkeys(values)), dtype=object)
        return cls(ext, {v: i for i, v in enumerate(ext)})

    def __post_init__(self) -> None:
        if not self._index:
            object.__setattr__(self, "_index", {v: i for i, v in enumerate(self.external)})

    def __len__(self) -> int:
        return len(self.external)

    def __contains__(self, value: object) -> bool:
        return value in self._index

    def index_of(self, value: str, missing: int = -1) -> int:
        """Index of one id (``missing`` when unknown)."""
        return self._index.get(value, missing)

    def to_internal(self, values: Sequence[str], missing: int = -1) -> np.ndarray:
        """Indices of ``values``; unknown ids map to ``missing``."""
        get = self._index.get
        return np.fromiter((get(v, missing) for v in values), dtype=np.int64, count=len(values))

    def to_external(self, idx: np.ndarray) -> np.ndarray:
        return self.external[np.asarray(idx, dtype=np.int64)]


@dataclass(frozen=True)
class Features:
    """A sparse feature matrix (rows follow an IdMap) and its column names."""

    names: list[str]
    matrix: sp.csr_matrix
    dropped: dict[str, str] = field(default_factory=dict, compare=False)  # feature or "group:*" -> why it was left out

    def __post_init__(self) -> None:
        if self.matrix.shape[1] != len(self.names):
            raise ValueError("feature names do not match the matrix width")

    def groups(self) -> list[str]:
        """Feature groups present (the prefix before ``:``, e.g. ``tier``, ``cat``, ``id``), in first-seen order."""
        return list(dict.fromkeys(n.split(":", 1)[0] for n in self.names))

    def select_groups(self, keep: Iterable[str]) -> Features:
        """Only the columns of groups in ``keep`` (identity ``id`` always stays); rows renormalised to sum 1."""
        wanted = set(keep) | {IDENTITY_GROUP}
        cols = np.array([i for i, n in enumerate(self.names) if n.split(":", 1)[0] in wanted], dtype=np.int64)
        if len(cols) == len(self.names):
            return self
        m = self.matrix.tocsc()[:, cols].tocsr()
        m.data = np.ones_like(m.data)  # back to indicators, then renormalise over what is left
        return Features([self.names[i] for i in cols], _row_normalised(m), self.dropped)

    def describe_dropped(self, limit: int = 480) -> str:
        """One line naming what was dropped and why (for logs and logged params); empty when nothing was."""
        text = "; ".join(f"{k} ({v})" for k, v in self.dropped.items())
        return text if len(text) <= limit else text[: limit - 3] + "..."


IDENTITY_GROUP = "id"
MAX_FEATURE_SHARE = 0.99
"""A feature column set on at least this share of the rows carries no information (it acts as a second bias)."""
MIN_FEATURE_ROWS = 1
"""A feature column set on fewer rows than this carries no information (never learned from)."""


class InteractionConfig(BaseModel):
    """How events become the user x item matrix the collaborative models fit."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight per event type; types missing here are ignored.",
    )
    half_life_days: float | None = Field(None, gt=0, description="Time decay: an event loses half its weight per half-life.")
    recency_half_life: float | None = Field(
        None,
        gt=0,
        description="Per-user recency: an event k events before the user's latest one weighs 0.5^(k/h). "
        "Captures the user's current interest (strong on sequential data).",
    )
    strength: dict[str, EventStrength] = Field(
        default_factory=default_event_strength,
        description="Per event type, how quantity/value scales its weight (settings events.strength); types named "
        "replace their default, the others use their weight only.",
    )
    normalize: Literal["none", "types", "user"] = Field(
        "none",
        description="types: weights divided by the largest weight among the event types present, so the strongest "
        "type counts 1 whatever its label; user: each user's row divided by its largest entry.",
    )
    confidence: Literal["linear", "log"] = Field("linear", description="linear: w; log: log1p(w) (dampens heavy users).")
    weighting: Literal["none", "bm25", "tfidf"] = Field(
        "none",
        description="Applied last, on the items x users matrix as implicit's bm25_weight / tfidf_weight: user idf "
        "(users with many items count less) and, for bm25, saturation and item length normalisation.",
    )
    bm25_k1: float = Field(100.0, gt=0, description="weighting = bm25: saturation (small: every entry near 1; large: ~linear).")
    bm25_b: float = Field(0.8, ge=0, le=1, description="weighting = bm25: item length normalisation (0 none, 1 full).")
    binary: bool = Field(False, description="Every user-item pair with any event counts 1 (overrides weights and strength).")

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """Dotted keys (``strength.purchase.transform``, as ``--param interactions.strength.purchase.transform=log1p``
        and logged parameters spell them) set one entry of ``strength`` / ``weights``; ``strength`` is
        merged over the defaults (:data:`DEFAULT_EVENT_STRENGTH`)."""
        if not isinstance(data, dict):
            return data
        out = {k: v for k, v in data.items() if "." not in k}
        if "strength" in out or any(k.startswith("strength.") for k in data):
            given = out.get("strength") or {}
            if not isinstance(given, dict):
                return data  # let validation name the field
            base = {k: dict(v) for k, v in DEFAULT_EVENT_STRENGTH.items()}
            out["strength"] = {**base, **{k: v.model_dump() if isinstance(v, EventStrength) else v for k, v in given.items()}}
        for key, value in data.items():
            if "." not in key:
                continue
            head, *rest = key.split(".")
            if head not in ("strength", "weights") or len(rest) > (2 if head == "strength" else 1):
                raise ValueError(f"unknown interactions key {key!r}")
            if head == "weights":
                out["weights"] = {**dict(out.get("weights", DEFAULT_EVENT_WEIGHTS)), rest[0]: value}
            elif len(rest) == 1:
                out["strength"][rest[0]] = value
            else:
                entry = out["strength"].setdefault(rest[0], {})
                if not isinstance(entry, dict):
                    return data
                entry = {**entry, rest[1]: value}
                if rest[1] == "transform" and value != "rating":  # threshold and scaled belong to 'rating'
                    entry = {k: v for k, v in entry.items() if k not in ("threshold", "scaled")}
                out["strength"][rest[0]] = entry
        return out


@dataclass(frozen=True)
class Dataset:
    """Everything a model needs to fit: ids, interactions and optional features."""

    users: IdMap
    items: IdMap
    interactions: sp.csr_matrix  # (len(users), len(items)) float32
    user_features: Features | None = None
    item_features: Features | None = None
    item_table: pl.DataFrame | None = None  # catalogue rows in item index order (category, price, ...)
    as_of: datetime | None = None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def table_column(table: pl.DataFrame, name: str, default: Any) -> np.ndarray:
    """Column ``name`` of an item or user table as numpy, nulls (or the whole column, when the
    table lacks it) replaced by ``default``."""
    if name not in table.columns:
        return np.full(table.height, default)
    return table[name].fill_null(default).to_numpy()


def interaction_matrix(
    events: pl.DataFrame,
    users: IdMap,
    items: IdMap,
    config: InteractionConfig,
    as_of: datetime | None = None,
) -> sp.csr_matrix:
    """Aggregate events into a users x items CSR matrix of float32 weights.

    Events of users or items outside the id maps, and of types without a weight, are left out
    (the caller decides the id maps, e.g. the training window's users and the catalogue).
    """
    df = events.select(
        C.User, C.Item, C.EventType, C.Timestamp,
        *(pl.col(c).cast(pl.Float64) if c in events.columns else pl.lit(None, dtype=pl.Float64).alias(c) for c in (C.Quantity, C.Value)),
    )
    weights = {k: v for k, v in config.weights.items() if v > 0}
    df = df.filter(pl.col(C.EventType).is_in(list(weights)))
    if config.normalize == "types" and df.height:
        top = max(weights[t] for t in df[C.EventType].unique().to_list())
        weights = {k: v / top for k, v in weights.items()}
    w = pl.lit(1.0) if config.binary else pl.col(C.EventType).replace_strict(weights, return_dtype=pl.Float64)
    if not config.binary:
        df, w = _with_strength(df, w, config.strength)
    if config.half_life_days and not config.binary:
        ref = as_of or df[C.Timestamp].max()
        age_days = (pl.lit(ref) - pl.col(C.Timestamp)).dt.total_seconds() / 86_400.0
        w = w * (0.5 ** (age_days / config.half_life_days))
    if config.recency_half_life and not config.binary:
        back = pl.int_range(pl.len()).over(C.User).alias("_pos")
        df = df.sort(C.User, C.Timestamp, C.Item).with_columns(back).with_columns(
            (pl.len().over(C.User) - 1 - pl.col("_pos")).alias("_back")
        )
        w = w * (0.5 ** (pl.col("_back") / config.recency_half_life))
    uid = pl.DataFrame({C.User: users.external.tolist(), "_u": np.arange(len(users), dtype=np.int64)})
    iid = pl.DataFrame({C.Item: items.external.tolist(), "_i": np.arange(len(items), dtype=np.int64)})
    # polars' streaming engine: the joins and the sum run in morsels, so millions of events never
    # exist as whole joined frames (about half the transient memory on 5M events)
    agg = (
        df.lazy()
        .with_columns(w.alias("_w"))
        .select(C.User, C.Item, "_w")  # only what the joins and sums need: no copies of the other columns
        .join(uid.lazy(), on=C.User, how="inner")
        .join(iid.lazy(), on=C.Item, how="inner")
        .group_by("_u", "_i")
        .agg(pl.col("_w").max() if config.binary else pl.col("_w").sum())
        .collect(engine="streaming")
    )
    vals = agg["_w"].to_numpy().astype(np.float32)
    mat = sp.csr_matrix((vals, (agg["_u"].to_numpy(), agg["_i"].to_numpy())), shape=(len(users), len(items)), dtype=np.float32)
    mat.eliminate_zeros()  # pairs whose events all count 0 (ratings below the threshold)
    if config.normalize == "user":
        top_per_user = mat.max(axis=1).toarray().ravel()
        top_per_user[top_per_user <= 0] = 1.0
        mat = sp.csr_matrix(sp.diags((1.0 / top_per_user).astype(np.float32)) @ mat, dtype=np.float32)
    if config.confidence == "log" and not config.binary:
        mat.data = np.log1p(mat.data).astype(np.float32)
    if config.weighting != "none":
        mat = weighted(mat, config.weighting, config.bm25_k1, config.bm25_b)
    mat.sort_indices()
    return mat


def _with_strength(df: pl.DataFrame, w: pl.Expr, strength: dict[str, EventStrength]) -> tuple[pl.DataFrame, pl.Expr]:
    """``w`` times each event's strength (:func:`event_strength`) for the types ``strength`` transforms."""
    active = {t: s for t, s in strength.items() if s.transform != "none"}
    if not active or df.height == 0:
        return df, w
    types = df[C.EventType].to_numpy()
    factor = np.ones(df.height, dtype=np.float64)
    for t, spec in active.items():
        rows = types == t
        if rows.any():
            x = df[spec.source].fill_null(np.nan).to_numpy()[rows]
            factor[rows] = event_strength(x, spec.transform, spec.threshold, spec.scaled)
    return df.with_columns(pl.Series("_strength", factor)), w * pl.col("_strength")


def weighted(mat: sp.csr_matrix, weighting: str, k1: float = 100.0, b: float = 0.8) -> sp.csr_matrix:
    """``mat`` (users x items) weighted as implicit's ``bm25_weight(mat.T, k1, b).T`` /
    ``tfidf_weight(mat.T).T``: items are the documents, users the terms (idf: a user with many items
    counts less; bm25 saturates large entries and normalises by the item's total). float32 CSR."""
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    item_user = mat.T.tocsr()
    if weighting == "bm25":
        out = bm25_weight(item_user, K1=k1, B=b)
    elif weighting == "tfidf":
        out = tfidf_weight(item_user)
    else:
        raise ValueError(f"unknown weighting {weighting!r}; expected none, bm25 or tfidf")
    res = sp.csr_matrix(out.T, dtype=np.float32)
    res.sort_indices()
    return res


def _one_hot(
    ids: IdMap,
    rows: pl.DataFrame,
    key: str,
    columns: dict[str, str],
    identity: bool,
    prune: bool = True,
    max_share: float = MAX_FEATURE_SHARE,
    min_rows: int = MIN_FEATURE_ROWS,
) -> Features:
    """Indicator features ``<prefix>:<value>`` for each column (list columns give one per element).

    With ``prune``, columns without information on these rows are left out and recorded in
    ``Features.dropped`` (see :func:`_prune`; identity features are never dropped). With ``identity``
    every row also gets its own ``id:<id>`` feature, as LightFM expects for hybrid models; rows are
    normalised so each row's weights sum to 1.
    """
    index = pl.DataFrame({key: ids.external.tolist(), "_row": np.arange(len(ids), dtype=np.int64)})
    # rows as their integer index from the start, and the concatenation, de-duplication and joins
    # in polars' streaming engine: no whole (text id, text feature) frames on 500k-item catalogues
    keyed = rows.lazy().join(index.lazy(), on=key, how="inner")
    pairs = []
    for col, prefix in columns.items():
        if col not in rows.columns:
            continue
        part = keyed.select("_row", pl.col(col).alias("_v"))
        if isinstance(rows.schema[col], pl.List):
            part = part.explode("_v")
        pairs.append(part.drop_nulls("_v").select("_row", (pl.lit(prefix + ":") + pl.col("_v").cast(pl.String)).alias("_f")))
    feats = (
        pl.concat(pairs).unique().collect(engine="streaming") if pairs
        else pl.DataFrame({"_row": [], "_f": []}, schema={"_row": pl.Int64, "_f": pl.String})
    )
    dropped: dict[str, str] = {}
    if prune:
        feats, dropped = _prune(feats, len(ids), max_share, min_rows)
    names = sorted(feats["_f"].unique().to_list())
    name_idx = pl.DataFrame({"_f": pl.Series(names, dtype=pl.String), "_col": np.arange(len(names), dtype=np.int64)})
    feats = feats.lazy().join(name_idx.lazy(), on="_f").select("_row", "_col").collect(engine="streaming")
    r, c = feats["_row"].to_numpy(), feats["_col"].to_numpy()
    if identity:
        n = len(names)
        names = names + [f"id:{v}" for v in ids.external]
        r = np.concatenate([r, np.arange(len(ids))])
        c = np.concatenate([c, n + np.arange(len(ids))])
    m = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(ids), len(names)))
    return Features(names, _row_normalised(m), dropped)


def _row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(m.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / sums).astype(np.float32) @ m, dtype=np.float32)


def _prune(feats: pl.DataFrame, n_rows: int, max_share: float, min_rows: int) -> tuple[pl.DataFrame, dict[str, str]]:
    """Leave out feature columns without information on these rows: a group with one value that (nearly) every
    row has, a column set on >= ``max_share`` of the rows or on fewer than ``min_rows``. ``feats`` holds
    distinct (row key, ``_f`` = ``group:value``) pairs; returns what is kept and {name: reason} of what is not."""
    if feats.height == 0 or n_rows == 0:
        return feats, {}
    counts = (
        feats.group_by("_f").agg(pl.len().alias("_n"))
        .with_columns(pl.col("_f").str.split_exact(":", 1).struct.field("field_0").alias("_g"))
        .sort("_f")
    )
    dropped: dict[str, str] = {}
    for g, part in counts.group_by("_g", maintain_order=True):
        group = str(g[0])
        if part.height == 1 and part["_n"][0] >= max_share * n_rows:
            dropped[f"{group}:*"] = f"one value for every row: {part['_f'][0]}"
            continue
        for name, n in part.select("_f", "_n").iter_rows():
            if n >= max_share * n_rows or n < min_rows:
                dropped[name] = f"set on {n}/{n_rows} rows"
    if not dropped:
        return feats, {}
    gone_groups = [k[:-2] for k in dropped if k.endswith(":*")]
    gone = [k for k in dropped if not k.endswith(":*")]
    keep = ~pl.col("_f").is_in(gone)
    if gone_groups:
        keep = keep & ~pl.col("_f").str.split_exact(":", 1).struct.field("field_0").is_in(gone_groups)
    return feats.filter(keep), dropped


def item_features(items: IdMap, table: pl.DataFrame, identity: bool = True, prune: bool = True) -> Features:
    """Category path levels, brand, price band and tags as indicator features (``prune``: without the
    uninformative ones, see :func:`_one_hot`)."""
    # every prefix of the category path, so "Home" and "Home > Kitchen" are both features
    path = pl.col(C.Category).str.split(CATEGORY_SEP)
    levels = [path.list.head(k).list.join(CATEGORY_SEP) for k in range(1, 5)]
    t = table.with_columns(pl.concat_list(levels).list.unique(maintain_order=True).alias("_levels"))
    cols = {"_levels": "cat", C.Brand: "brand", C.Tags: "tag"}
    if "price_band" in t.columns:
        cols["price_band"] = "price"
    return _one_hot(items, t, C.Item, cols, identity, prune)


USER_FEATURE_COLUMNS = {
    "tier": "tier",
    "segment": "segment",
    C.AgeBand: "age",
    C.Gender: "gender",
    C.Region: "region",
    C.Occupation: "occupation",
    "price_band": "price",
    "_top_cats": "likes",
}


def user_features(users: IdMap, profiles: pl.DataFrame, identity: bool = True, prune: bool = True) -> Features:
    """Tier, lifecycle segment, demographics, price band and top categories from the profiles (``prune``:
    without the uninformative ones, see :func:`_one_hot`)."""
    p = profiles
    if "top_categories" in p.columns:
        p = p.with_columns(pl.col("top_categories").list.eval(pl.element().struct.field("category")).alias("_top_cats"))
    return _one_hot(users, p, C.User, USER_FEATURE_COLUMNS, identity, prune)
