"""vision_anomaly (PatchCore): coreset, exact nearest distances, patch features with real TensorFlow, a planted
defect found and located, bit-identical refits, save and load."""
from __future__ import annotations

import numpy as np
import pytest

from vapm.models.vision_anomaly.coreset import (
    CoresetError,
    coreset_size,
    greedy_coreset,
    random_projection,
    select_bank,
)
from vapm.models.vision_anomaly.scoring import anomaly_map, image_scores, nearest_in_bank


def naive_k_center(points: np.ndarray, k: int, start: int) -> list[int]:
    """The textbook rule with exact distances, one point at a time."""
    chosen = [start]
    while len(chosen) < k:
        gaps = [min(np.linalg.norm(p - points[c]) for c in chosen) if i not in chosen else -1.0
                for i, p in enumerate(points)]
        chosen.append(int(np.argmax(gaps)))
    return chosen


def test_greedy_coreset_picks_the_k_centres_of_a_hand_made_case():
    # Four tight clusters at the corners of a 10 x 10 square and one outlier far to the right. From the origin the
    # farthest point is the outlier (30, 0); then (10, 10) (14.1 from the origin); then (10.5, 0) (10.01 from
    # (10, 10), 10.5 from the origin: more than (0, 10)'s 10); then (0, 10) (10 from both the origin and (10, 10)).
    points = np.array([[0, 0], [0.5, 0], [0, 0.5],           # 0-2: near (0, 0)
                       [10, 0], [10.5, 0],                    # 3-4: near (10, 0)
                       [0, 10], [0.2, 10.2],                  # 5-6: near (0, 10)
                       [10, 10], [9.8, 10.1],                 # 7-8: near (10, 10)
                       [30, 0]], dtype=np.float64)            # 9: outlier
    assert greedy_coreset(points, 4, start=0).tolist() == [0, 9, 7, 4]
    assert greedy_coreset(points, 5, start=0).tolist() == [0, 9, 7, 4, 5]  # one point per cluster and the outlier
    chosen = greedy_coreset(points, len(points), start=0)
    assert sorted(chosen.tolist()) == list(range(len(points)))  # nothing is chosen twice


def test_greedy_coreset_matches_the_textbook_rule_and_is_seeded():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(120, 6))
    for start in (0, 17, 119):
        assert greedy_coreset(points, 25, start=start).tolist() == naive_k_center(points, 25, start)
    first = greedy_coreset(points, 10, seed=5)
    assert np.array_equal(first, greedy_coreset(points, 10, seed=5))
    assert int(first[0]) == int(np.random.default_rng(5).integers(len(points)))
    with pytest.raises(CoresetError):
        greedy_coreset(points, 0)
    with pytest.raises(CoresetError):
        greedy_coreset(points, 121)


def test_coreset_size_and_projection():
    assert coreset_size(1000, 0.1, 10_000) == 100
    assert coreset_size(1000, 0.1, 40) == 40
    assert coreset_size(3, 0.01, 10) == 1
    with pytest.raises(CoresetError):
        coreset_size(10, 0.0, 10)
    x = np.random.default_rng(0).normal(size=(50, 300)).astype(np.float32)
    projected = random_projection(x, 128, seed=7)
    assert projected.shape == (50, 128) and projected.dtype == np.float64
    assert np.array_equal(projected, random_projection(x, 128, seed=7))
    assert not np.array_equal(projected, random_projection(x, 128, seed=8))
    assert np.array_equal(random_projection(x[:, :20], 128, seed=7), x[:, :20].astype(np.float64))  # small: as is
    # Johnson-Lindenstrauss: pairwise distances roughly kept (within 35 % for 128 dimensions, here)
    ratio = np.linalg.norm(projected[0] - projected[1:], axis=1) / np.linalg.norm(x[0] - x[1:], axis=1)
    assert 0.65 < ratio.min() and ratio.max() < 1.35
    chosen = select_bank(x, 0.2, 100, 128, seed=1)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10


def test_nearest_in_bank_is_the_exact_float64_nearest():
    rng = np.random.default_rng(11)
    bank = rng.normal(size=(700, 40)).astype(np.float32) * 5 + 100  # large norms: float32 expansion cancels badly
    queries = np.concatenate([bank[::7] + rng.normal(size=(100, 40)).astype(np.float32) * 1e-3,
                              rng.normal(size=(60, 40)).astype(np.float32) * 5 + 100])
    distances, locations = nearest_in_bank(queries, bank)
    exact = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1))
    assert np.array_equal(locations, exact.argmin(axis=1))
    assert np.array_equal(distances, np.sqrt(np.sum((queries.astype(np.float64) - bank[locations].astype(np.float64))
                                                    ** 2, axis=1)))
    # a tie goes to the lowest bank index
    tied = np.vstack([bank[:5], bank[2:3]])
    assert nearest_in_bank(bank[2:3], tied)[1].tolist() == [2]


def test_nearest_in_bank_gives_the_same_bits_in_chunks_and_with_a_prepared_bank(monkeypatch):
    from vapm.models.vision_anomaly import scoring

    rng = np.random.default_rng(5)
    bank = rng.normal(size=(300, 24)).astype(np.float32)
    queries = np.concatenate([bank[::3] + 1e-4, rng.normal(size=(77, 24)).astype(np.float32)])
    whole = nearest_in_bank(queries, bank)
    monkeypatch.setattr(scoring, "CHUNK_ELEMENTS", 300 * 16)  # 16 rows a chunk, the last one shorter
    for bank_given in (bank, scoring.Bank(bank)):
        chunked = nearest_in_bank(queries, bank_given)
        assert np.array_equal(chunked[0], whole[0]) and np.array_equal(chunked[1], whole[1])


def test_image_score_is_the_largest_patch_score_reweighted_below_it():
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(50, 4))
    patches = rng.normal(size=(3, 10, 4))
    distances, locations = nearest_in_bank(patches.reshape(-1, 4), bank)
    distances, locations = distances.reshape(3, 10), locations.reshape(3, 10)
    plain = image_scores(distances, locations, patches, bank, n_neighbors=1)
    assert np.array_equal(plain, distances.max(axis=1))
    weighted = image_scores(distances, locations, patches, bank, n_neighbors=9)
    assert np.all(weighted > 0) and np.all(weighted < plain)


def test_anomaly_map_upsamples_and_smooths_a_single_hot_patch_where_it_is():
    grid = np.zeros((8, 8))
    grid[2, 5] = 1.0
    resized = anomaly_map(grid, 64, sigma=0)
    import keras  # the same bilinear rule (half-pixel centres) as the extractor's Keras Resizing

    as_keras = np.asarray(keras.layers.Resizing(64, 64, interpolation="bilinear")(grid[None, :, :, None]))[0, :, :, 0]
    assert resized.shape == (64, 64) and np.allclose(resized, as_keras, atol=1e-6)
    peak = np.unravel_index(np.argmax(anomaly_map(grid, 64, sigma=4)), (64, 64))
    assert 16 <= peak[0] < 24 and 40 <= peak[1] < 48  # patch (2, 5) covers rows 16-23, columns 40-47
    assert np.allclose(anomaly_map(np.full((4, 4), 3.0), 32), 3.0)


# --------------------------------------------------------------------------- with real TensorFlow

def test_local_average_and_channel_pooling():
    import keras

    from vapm.models.vision_anomaly.features import channel_pooling_matrix, combine_layers, local_average

    x = np.zeros((1, 7, 7, 1), np.float32)
    x[0, 2, 2, 0] = 9.0
    x[0, 6, 6, 0] = 4.0
    inputs = keras.Input((7, 7, 1))
    out = np.asarray(keras.Model(inputs, local_average(inputs))(x))[0, :, :, 0]
    assert np.allclose(out[1:4, 1:4], 1.0)   # the 9 spread evenly over its 3x3 neighbourhood
    assert np.isclose(out[6, 6], 1.0)        # a corner: 4 over the 4 positions that exist
    assert np.isclose(out[5, 5], 4 / 9) and np.isclose(out[0, 4], 0.0) and out.shape == (7, 7)
    matrix = channel_pooling_matrix(5, 2)  # torch.adaptive_avg_pool1d bins [0, 3) and [2, 5)
    assert np.allclose(matrix.T, [[1 / 3, 1 / 3, 1 / 3, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]])
    shallow, deep = keras.Input((4, 4, 3)), keras.Input((2, 2, 2))
    model = keras.Model([shallow, deep], combine_layers([shallow, deep], feature_dim=None))
    features = np.asarray(model([np.ones((1, 4, 4, 3), np.float32), np.full((1, 2, 2, 2), 2.0, np.float32)]))
    assert features.shape == (1, 4, 4, 5) and np.allclose(features[..., :3], 1) and np.allclose(features[..., 3:], 2)


def texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A normal surface: diagonal stripes with a random phase and grain."""
    y, x = np.mgrid[:size, :size]
    stripes = 100 + 40 * np.sin((x + y) / 3.0 + rng.uniform(0, 2 * np.pi))
    return np.clip(stripes + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def planted():
    """10 normal train images, 4 normal test images and one with a dark blob at rows 36-47, columns 12-23."""
    from vapm.models.vision_anomaly import Params, fit_patchcore

    rng = np.random.default_rng(0)
    images = np.stack([texture(rng) for _ in range(15)])
    images[14, 36:48, 12:24] = 10
    labels = np.array([0] * 14 + [1])
    splits = np.array(["train"] * 10 + ["test"] * 5)
    params = Params(normal_class="ok", input_size=128, threshold_method="holdout", validation_fraction=0.3,
                    coreset_fraction=0.25, n_neighbors=3, feature_dim=64)
    fit = lambda: fit_patchcore(images, labels, splits, ["ok", "defect"], settings=params, seed=42)  # noqa: E731
    return images, fit(), fit()


def test_a_planted_defect_scores_highest_and_the_map_peaks_on_it(planted):
    images, model, _ = planted
    assert model.bank.shape[1] == 64 and len(model.fit_rows) == 7 and model.threshold.method == "holdout"
    assert set(model.fit_rows.tolist()) < set(range(10))  # normal train images only, validation ones left out
    scores, maps = model.score_with_maps(images[10:])
    assert maps.shape == (5, 64, 64)
    assert int(np.argmax(scores)) == 4 and scores[4] > 1.5 * scores[:4].max()
    assert model.is_abnormal(scores)[4]
    peak = np.unravel_index(np.argmax(maps[4]), maps[4].shape)
    assert 34 <= peak[0] < 50 and 10 <= peak[1] < 26, peak  # the blob: rows 36-47, columns 12-23


def test_refitting_is_bit_identical_and_a_saved_model_scores_the_same(planted, tmp_path):
    from vapm.models.vision_anomaly import PatchCoreModel

    images, first, second = planted
    assert first.bank.tobytes() == second.bank.tobytes()
    assert first.threshold == second.threshold
    scores = first.score_images(images[10:])
    assert scores.tobytes() == second.score_images(images[10:]).tobytes()
    first.save(tmp_path / "model")
    loaded = PatchCoreModel.load(tmp_path / "model")
    assert loaded.score_images(images[10:]).tobytes() == scores.tobytes()
    assert loaded.threshold == first.threshold and loaded.normal_class == "ok"


def test_the_normal_class_defaults_to_the_most_frequent_train_class():
    from vapm.models.vision_anomaly.model import PatchCoreError, normal_train_rows, resolve_normal_class

    labels = np.array([0, 1, 1, 2, 2, 2, 0, 0, 0])
    splits = np.array(["train"] * 6 + ["test"] * 3)  # class 0 is the most frequent only with the test split
    assert resolve_normal_class(labels, splits, ["a", "b", "c"], None) == "c"
    assert resolve_normal_class(labels, splits, ["a", "b", "c"], "b") == "b"
    assert resolve_normal_class(np.array([1, 0]), np.array(["train"] * 2), ["a", "b"], None) == "a"  # tie: first
    assert normal_train_rows(labels, splits, ["a", "b", "c"], "a").tolist() == [0]  # train rows only
    with pytest.raises(PatchCoreError, match="not one of the classes"):
        normal_train_rows(labels, splits, ["a", "b", "c"], "z")
