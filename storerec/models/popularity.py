"""Popularity baselines: global, per category (in the user's categories), trending, new arrivals."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from storerec.core.formulas import new_arrival_score, trending_rank_score
from storerec.core.schema import Columns
from storerec.models.base import ModelBase, ModelConfig
from storerec.models.dataset import Dataset, table_column

C = Columns


class PopularityConfig(ModelConfig):
    kind: Literal["global", "category", "trending", "new"] = Field(
        "global",
        description="global: most users; category: popular within the user's categories; "
        "trending: recent growth of established items (item features' trending_score; new arrivals "
        "excluded); new: new arrivals by their users in the last 7 days (item features' pop_7d). "
        "trending and new use the formulas of the served lists (storerec.core.formulas).",
    )


class PopularityModel(ModelBase[PopularityConfig]):
    """Scores every item by popularity (the same list for everyone, except ``kind="category"``).

    Popularity = number of distinct users who interacted with the item in the training data.
    ``trending`` and ``new`` need the item feature table (``Dataset.item_table``) built as of the
    training cut-off, and rank as the service's trending and new-arrival lists do.
    """

    name = "popularity"
    config_class = PopularityConfig
    recommends_for_warm = True
    recommends_for_cold = True
    has_item_similarity = True
    state_keys = ("item_scores", "category_codes")

    def _fit(self, dataset: Dataset) -> None:
        users_per_item = np.diff(dataset.interactions.tocsc().indptr).astype(np.float32)
        kind = self.config.kind
        self.category_codes = np.zeros(dataset.n_items, dtype=np.int64)
        if kind in ("trending", "new", "category") and dataset.item_table is None:
            raise ValueError(f"popularity kind={kind!r} needs the item feature table (Dataset.item_table)")
        table = dataset.item_table
        if kind == "trending":
            assert table is not None
            trending = table_column(table, "trending_score", 0.0).astype(np.float32)
            base = trending_rank_score(trending, users_per_item, table_column(table, "is_new", False))
        elif kind == "new":
            assert table is not None
            base = new_arrival_score(table_column(table, "is_new", False), table_column(table, "pop_7d", 0).astype(np.float32))
        else:
            base = users_per_item / max(1.0, users_per_item.max())
        if table is not None:
            self.category_codes = table[C.Category].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
        self.item_scores = base.astype(np.float32)

    def _user_category_share(self, user_idx: np.ndarray) -> np.ndarray:
        assert self.seen is not None
        n_cat = int(self.category_codes.max()) + 1 if len(self.category_codes) else 1
        onehot = np.zeros((len(self.category_codes), n_cat), dtype=np.float32)
        onehot[np.arange(len(self.category_codes)), self.category_codes] = 1.0
        per_cat = np.asarray(self.seen[user_idx] @ onehot)
        totals = per_cat.sum(axis=1, keepdims=True)
        totals[totals == 0] = 1.0
        return per_cat / totals

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        if self.config.kind == "category":
            share = self._user_category_share(user_idx)
            return share[:, self.category_codes] * (1.0 + self.item_scores[None, :]) + 1e-3 * self.item_scores[None, :]
        return np.tile(self.item_scores, (len(user_idx), 1))

    def _score_warm(self, user_idx: np.ndarray) -> np.ndarray:
        return np.tile(self.item_scores, (len(user_idx), 1))

    def _score_cold(self, n_users: int) -> np.ndarray:
        return np.tile(self.item_scores, (n_users, 1))

    def _item_similarity(self, item_idx: np.ndarray) -> np.ndarray:
        same = self.category_codes[item_idx][:, None] == self.category_codes[None, :]
        return np.where(same, 1.0 + self.item_scores[None, :], self.item_scores[None, :]).astype(np.float32)
