"""Unfamiliar-input scores (vapm.models.components.unfamiliar): familiar items pass, shifted ones are flagged."""
from __future__ import annotations

import numpy as np
import pytest

from vapm.models.components.unfamiliar import fit_mahalanobis, fit_neighbours, flag_threshold


def clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[0.0] * 8, [4.0] * 8, [-4.0] + [0.0] * 7])
    return centres[labels] + rng.normal(0, 1, (n, 8)), labels


@pytest.mark.parametrize("fit", [lambda x, y: fit_mahalanobis(x, y), lambda x, y: fit_neighbours(x, 5)])
def test_familiar_items_pass_at_the_rate_and_shifted_ones_are_flagged(fit):
    train_x, train_y = clusters(600, 0)
    held_x, _ = clusters(1000, 1)
    test_x, _ = clusters(1000, 2)
    scorer = fit(train_x, train_y)
    threshold = flag_threshold(scorer.score(held_x), 0.01)
    assert (scorer.score(held_x) > threshold).mean() <= 0.01
    # Fresh familiar items: the rate holds up to sampling noise (binomial sd of 1 % of 1000 is 0.3 %).
    assert (scorer.score(test_x) > threshold).mean() <= 0.01 + 3 * np.sqrt(0.01 * 0.99 / 1000)
    rng = np.random.default_rng(3)
    for shifted in (test_x * 100, test_x + 12, rng.normal(0, 6, test_x.shape)):
        assert (scorer.score(shifted) > threshold).mean() >= 0.95


def test_mahalanobis_uses_the_shared_shape_of_the_classes():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (2000, 2)) * [10.0, 0.1]  # long along the first axis, thin along the second
    scorer = fit_mahalanobis(x, np.zeros(2000, dtype=int))
    along, across = scorer.score(np.array([[5.0, 0.0], [0.0, 0.5]]))
    assert across > 5 * along  # 0.5 across is farther than 5 along (Euclidean: 100 times nearer), shrinkage or not


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="rate in"):
        flag_threshold(np.ones(5), 1.5)
    with pytest.raises(ValueError, match="n >= k"):
        fit_neighbours(np.ones((3, 2)), k=5)


def test_the_per_class_products_give_the_einsum_distances():
    from vapm.models.components.unfamiliar import fit_mahalanobis

    rng = np.random.default_rng(3)
    x, labels = rng.normal(size=(60, 12)), np.repeat(np.arange(3), 20)
    scorer = fit_mahalanobis(x, labels)
    probes = rng.normal(size=(9, 12)) * 3
    differences = probes[:, None, :] - scorer.means[None, :, :]
    reference = np.einsum("ncf,fg,ncg->nc", differences, scorer.precision, differences).min(axis=1)
    # The same sums in another order: float64 rounding of values of order 10-100 over 12 terms.
    np.testing.assert_allclose(scorer.score(probes), reference, rtol=1e-12)
