"""EASE: float32 Cholesky equals the float64 inverse, Gram reuse across lambda, size refusal."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from storerec.core.errors import UserError
from storerec.models import ease
from storerec.models.dataset import Dataset, IdMap
from storerec.models.ease import EASEModel, EASETooLargeError


def _matrix(n_users: int = 300, n_items: int = 120, density: float = 0.08, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.random(n_users, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    x.data = (1.0 + 4.0 * x.data).astype(np.float32)  # weights in [1, 5)
    return x


def _dataset(x: sp.csr_matrix) -> Dataset:
    users = IdMap.from_values([f"u{u}" for u in range(x.shape[0])])
    items = IdMap.from_values([f"i{i}" for i in range(x.shape[1])])
    return Dataset(users=users, items=items, interactions=x)


def _reference(x: sp.csr_matrix, lam: float, binary: bool = True) -> np.ndarray:
    """The previous implementation: float64 ``np.linalg.inv`` of the Gram matrix."""
    x64 = x.astype(np.float64)
    if binary:
        x64 = (x64 > 0).astype(np.float64)
    g = (x64.T @ x64).toarray()
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    return b


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-4 * scale)


@pytest.mark.parametrize("lam", [1.0, 10.0, 500.0])
@pytest.mark.parametrize("binary", [True, False])
def test_float32_cholesky_equals_float64_inverse(lam: float, binary: bool) -> None:
    x = _matrix()
    model = EASEModel(regularization=lam, binary=binary).fit(_dataset(x))
    assert model.weights.dtype == np.float32
    assert np.all(np.diag(model.weights) == 0)
    _close(model.weights, _reference(x, lam, binary))


def test_gram_blocks_equal_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _matrix(seed=1)
    monkeypatch.setattr(ease, "BLOCK_PAIRS", 50)  # many user blocks
    expected = (x.T @ x).toarray()
    np.testing.assert_allclose(ease.gram(x), expected, rtol=1e-6)


def test_inverse_in_place_odd_block_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ease, "SYM_BLOCK", 7)  # triangle mirrored in uneven blocks
    rng = np.random.default_rng(2)
    m = rng.normal(size=(50, 50))
    a = (m @ m.T + 50 * np.eye(50)).astype(np.float32)
    expected = np.linalg.inv(a.astype(np.float64))
    out = ease.inv_spd_inplace(a)
    assert out is a
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(a, a.T)


def test_fingerprint_follows_content() -> None:
    x = _matrix(seed=3)
    assert ease.fingerprint(x) == ease.fingerprint(x.copy())
    assert ease.fingerprint(x) == ease.fingerprint(x.tocoo())  # same content, another format
    y = x.copy()
    y.data[0] += 1.0
    assert ease.fingerprint(x) != ease.fingerprint(y)
    assert ease.fingerprint(x) != ease.fingerprint(x[:-1])


def test_reuse_gram_across_lambda_gives_the_same_weights() -> None:
    x = _matrix(seed=4)
    data = _dataset(x)
    lams = [50.0, 200.0, 200.0, 10.0]
    plain = [EASEModel(regularization=lam).fit(data).weights for lam in lams]
    with ease.reuse_gram() as state:
        reused = [EASEModel(regularization=lam).fit(data).weights for lam in lams]
        # recency/event weights change the matrix but not its 0/1 pattern: the Gram is reused
        scaled = x.copy()
        scaled.data *= 3.0
        reused.append(EASEModel(regularization=10.0).fit(_dataset(scaled)).weights)
    assert state.grams_computed == 1
    assert state.solves == 3  # 200 twice, then 10 again on the same 0/1 pattern: reused
    for a, b in zip(plain + [plain[-1]], reused):
        np.testing.assert_array_equal(a, b)
    assert ease._reuse is None  # released after the block
    # a new matrix replaces the cached Gram
    with ease.reuse_gram() as state:
        EASEModel(regularization=10.0).fit(data)
        EASEModel(regularization=10.0).fit(_dataset(_matrix(seed=5)))
    assert state.grams_computed == 2


def test_refusal_names_estimate_limit_and_alternative() -> None:
    x = _matrix(n_users=50, n_items=400, density=0.02)
    with pytest.raises(EASETooLargeError) as err:
        EASEModel(max_memory_gb=0.0001).fit(_dataset(x))
    msg = str(err.value)
    need = ease.estimate_bytes(400, 50, (x > 0).nnz, reuse=False) / ease.GiB
    assert f"needs about {need:.3g} GiB" in msg
    assert "limit of 0.0001 GiB (max_memory_gb)" in msg
    assert "itemknn" in msg and "als" in msg
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)

    with pytest.raises(EASETooLargeError, match=r"400 items exceed max_items=100 .*itemknn"):
        EASEModel(max_items=100).fit(_dataset(x))


def test_default_limit_comes_from_available_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _matrix(n_users=50, n_items=400, density=0.02)
    monkeypatch.setattr(ease, "_available_gib", lambda: 0.001)
    with pytest.raises(EASETooLargeError, match=r"80% of the RAM available now"):
        EASEModel().fit(_dataset(x))
    monkeypatch.setattr(ease, "_available_gib", lambda: 64.0)
    EASEModel().fit(_dataset(x))


def test_estimate_grows_with_items_squared_and_reuse() -> None:
    small = ease.estimate_bytes(1_000, 10_000, 100_000, reuse=False)
    big = ease.estimate_bytes(15_000, 10_000, 100_000, reuse=False)
    assert big > 0.9 * 15_000**2 * 4 > small
    assert ease.estimate_bytes(15_000, 10_000, 100_000, reuse=True) > 2.5 * 15_000**2 * 4


def test_reuse_is_skipped_when_the_cached_copy_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _matrix(n_users=50, n_items=400, density=0.02)
    n, nnz = 400, (x > 0).nnz
    plain = ease.estimate_bytes(n, 50, nnz, reuse=False) / ease.GiB
    cached = ease.estimate_bytes(n, 50, nnz, reuse=True) / ease.GiB
    limit = (plain + cached) / 2
    with ease.reuse_gram() as state:
        model = EASEModel(regularization=5.0, max_memory_gb=limit).fit(_dataset(x))
    assert state.grams_computed == 0 and state.gram is None
    _close(model.weights, _reference(x, 5.0))


def test_reused_weights_for_an_earlier_lambda_and_eviction(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _dataset(_matrix(seed=6))
    with ease.reuse_gram() as state:
        first = EASEModel(regularization=50.0).fit(data).weights
        EASEModel(regularization=200.0).fit(data)
        again = EASEModel(regularization=50.0).fit(data).weights
    assert again is first and not again.flags.writeable
    assert state.solves == 2
    monkeypatch.setattr(ease, "MAX_CACHED_WEIGHTS", 1)
    with ease.reuse_gram() as state:
        for lam in (50.0, 200.0, 50.0):
            EASEModel(regularization=lam).fit(data)
        assert list(state.weights) == [50.0]
    assert state.solves == 3


def test_default_limit_counts_the_cache_as_available(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _matrix(n_users=50, n_items=400, density=0.02)
    plain = ease.estimate_bytes(400, 50, (x > 0).nnz, reuse=False) / ease.GiB
    dense = 400 * 400 * 4 / ease.GiB
    with ease.reuse_gram() as state:
        monkeypatch.setattr(ease, "_available_gib", lambda: (plain + 3 * dense) / 0.8)
        EASEModel(regularization=1.0).fit(_dataset(x))
        assert state.held_bytes() == 2 * 400 * 400 * 4  # Gram + one weights
        # the cache took RAM: were it not counted back, the next fit would drop it and start over
        monkeypatch.setattr(ease, "_available_gib", lambda: (plain + 3 * dense) / 0.8 - 2 * dense)
        EASEModel(regularization=2.0).fit(_dataset(x))
    assert state.grams_computed == 1 and state.solves == 2


def test_tune_wraps_ease_trials_in_reuse_gram() -> None:
    from storerec.training.tune import _model_reuse

    with _model_reuse("ease"):
        assert ease._reuse is not None
    with _model_reuse("als"):
        assert ease._reuse is None
    assert ease._reuse is None
