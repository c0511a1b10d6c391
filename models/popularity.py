"""Popularity baselines: global, per category (in the user's categories), trending, new arrivals."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from features.schema import Columns
from models.base import ModelBase, ModelConfig
from models.dataset import Dataset

C = Columns


class PopularityConfig(ModelConfig):
    kind: Literal["global", "category", "trending", "new"] = Field(
        "global",
        description="global: most users; category: popular within the user's categories; "
        "trending: recent growth of established items (item features' trending_score; new arrivals "
        "excluded); new: popular new arrivals.",
    )


class PopularityModel(ModelBase):
    """Scores every item by popularity (the same list for everyone, except ``kind="category"``).

    Popularity = number of distinct users who interacted with the item in the training data.
    ``trending`` and ``new`` need the item feature table (``Dataset.item_table``) built as of the
    training cut-off.
    """

    name = "popularity"
    config_class = PopularityConfig
    recommends_for_warm = True
    recommends_for_cold = True

    def _fit(self, dataset: Dataset) -> None:
        users_per_item = np.diff(dataset.interactions.tocsc().indptr).astype(np.float32)
        base = users_per_item / max(1.0, users_per_item.max())
        kind = self.config.kind
        self.category_codes = np.zeros(dataset.n_items, dtype=np.int64)
        if kind in ("trending", "new", "category") and dataset.item_table is None:
            raise ValueError(f"popularity kind={kind!r} needs the item feature table (Dataset.item_table)")
        table = dataset.item_table
        if kind == "trending":
            # Growth of established items: new arrivals have no earlier weeks to grow from (their
            # ratio is just their first week's count) and have their own list (kind="new").
            established = ~table["is_new"].fill_null(False).to_numpy()
            base = table["trending_score"].fill_null(0).to_numpy().astype(np.float32) * (1.0 + base) * established
        elif kind == "new":
            base = np.where(table["is_new"].fill_null(False).to_numpy(), 1.0 + base, 0.0).astype(np.float32)
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

    def _get_state(self) -> dict[str, Any]:
        return {"item_scores": self.item_scores, "category_codes": self.category_codes}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.item_scores = state["item_scores"]
        self.category_codes = state["category_codes"]
