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


def test_feature_groups_combine_by_their_familiar_medians_and_round_trip():
    from vapm.models.components.unfamiliar import Familiarity, combined_score, fit_familiarity

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    near = rng.normal(size=(120, 6)) + labels[:, None]
    texture = rng.normal(size=(120, 4)) * 10  # another scale: counts by how unusual, not by its size
    single = fit_familiarity(near, labels, "mahalanobis", 5, 0.05, 5, seed=0)
    grouped = fit_familiarity([near, texture], labels, "mahalanobis", 5, 0.05, 5, seed=0)
    assert len(grouped.scorers) == 2 and len(grouped.medians) == 2 and single.medians == ()
    familiar = [rng.normal(size=(50, 6)) + 1, rng.normal(size=(50, 4)) * 10]
    assert np.mean(grouped.score(familiar) > grouped.threshold) < 0.15
    odd_texture = [familiar[0], familiar[1] + 60]  # familiar in the first group, far off in the second
    assert np.all(grouped.score(odd_texture) > grouped.threshold)
    assert np.mean(single.score(odd_texture[0]) > single.threshold) < 0.15  # the penultimate group alone misses it
    np.testing.assert_allclose(combined_score([np.array([2.0, 8.0]), np.array([3.0, 3.0])], np.array([2.0, 3.0])),
                               [0.0, np.log(4.0)])
    again = Familiarity.from_arrays(grouped.arrays())
    np.testing.assert_array_equal(again.score(odd_texture), grouped.score(odd_texture))
    assert Familiarity.from_arrays(single.arrays()).score(familiar[0]).tolist() == single.score(familiar[0]).tolist()
    with pytest.raises(ValueError, match="2 feature groups"):
        grouped.score(familiar[0])


def test_a_fitted_familiarity_keeps_its_out_of_fold_scores_in_the_items_order():
    from vapm.models.components.unfamiliar import Familiarity, combined_score, fit_familiarity, out_of_fold_scores

    x, labels = clusters(200, 4)
    second = np.abs(x[:, :3]) + 1.0
    one = fit_familiarity(x, labels, "mahalanobis", 5, 0.01, 5, 7)
    np.testing.assert_array_equal(one.held_out_scores, out_of_fold_scores("mahalanobis", x, labels, 5, 5, 7))
    assert one.threshold == flag_threshold(one.held_out_scores, 0.01)
    two = fit_familiarity([x, second], labels, "knn", 5, 0.01, 5, 7)
    groups = [out_of_fold_scores("knn", group, labels, 5, 5, 7) for group in (x, second)]
    np.testing.assert_array_equal(two.held_out_scores, combined_score(groups, np.asarray(two.medians)))
    # Not saved: a model read back has its threshold, not the scores that set it.
    assert Familiarity.from_arrays(one.arrays()).held_out_scores is None


def test_standardised_features_weigh_every_feature_alike_and_round_trip():
    from vapm.models.components.unfamiliar import SPREAD_FLOOR, Familiarity, fit_familiarity

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 100)

    def items(n: int, labels: np.ndarray) -> np.ndarray:
        wide = rng.normal(0, 1000, (n, 1))          # one feature with a wide range
        narrow = rng.normal(0, 1, (n, 3)) + labels[:, None]
        barely = rng.normal(0, 1e-6, (n, 1))        # one that barely varies
        return np.hstack([wide, narrow, barely])

    x = items(300, labels)
    familiar = items(90, np.repeat(np.arange(3), 30))
    shifted = familiar + [0, 8, 0, 0, 0]            # 8 spreads off in a narrow feature
    raw = fit_familiarity(x, labels, "knn", 5, 0.01, 5, seed=0, scale="raw")
    scaled = fit_familiarity(x, labels, "knn", 5, 0.01, 5, seed=0, scale="standardised")
    assert (raw.scale, scaled.scale, scaled.method) == ("raw", "standardised", "knn")
    assert np.mean(raw.score(shifted) > raw.threshold) < 0.2  # the wide feature hides the shift
    assert np.mean(scaled.score(shifted) > scaled.threshold) > 0.95
    assert np.mean(scaled.score(familiar) > scaled.threshold) < 0.05
    # The barely varying feature gets the floor: a familiar item 100 of its own spreads off there is not flagged.
    assert scaled.scorers[0].spread[4] == pytest.approx(SPREAD_FLOOR * np.median(scaled.scorers[0].spread[:4]),
                                                        rel=0.2)
    assert np.mean(scaled.score(familiar + [0, 0, 0, 0, 1e-4]) > scaled.threshold) < 0.05
    again = Familiarity.from_arrays(scaled.arrays())
    assert again.scale == "standardised"
    np.testing.assert_array_equal(again.score(shifted), scaled.score(shifted))
    assert Familiarity.from_arrays(raw.arrays()).scale == "raw"  # so is a model saved before `ood.standardise`
    mahalanobis = fit_familiarity(x, labels, "mahalanobis", 5, 0.01, 5, seed=0, scale="standardised")
    assert (mahalanobis.method, mahalanobis.scale) == ("mahalanobis", "standardised")
    assert np.mean(mahalanobis.score(familiar) > mahalanobis.threshold) < 0.05
    np.testing.assert_array_equal(Familiarity.from_arrays(mahalanobis.arrays()).score(shifted),
                                  mahalanobis.score(shifted))
    with pytest.raises(ValueError, match="unknown feature scale 'l2'"):
        fit_familiarity(x, labels, "knn", 5, 0.01, 5, seed=0, scale="l2")
