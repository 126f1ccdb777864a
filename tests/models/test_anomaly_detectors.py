"""Detectors learn from healthy train clips only, separate synthetic faults, and save/load exactly."""
from __future__ import annotations

import numpy as np
import pytest

from tests.models.anomaly_synth import CLASSES, SPECTROGRAM, machine_dataset
from vapm.core.errors import VapmError
from vapm.models.acoustic_anomaly import (AnomalyModel, AnomalySettings, AutoencoderDetector, AutoencoderSettings,
                                          KnnDetector, MahalanobisDetector, fit_anomaly_model, load_detector,
                                          log_mel_images, roc_auc)
from vapm.models.acoustic_anomaly.detectors import ARRAYS_FILE, AnomalyModelError, euclidean_distances

HEALTHY = CLASSES.index("Healthy")
TINY_AUTOENCODER = AutoencoderSettings(context_frames=3, hidden_units=(16,), bottleneck_units=4, epochs=3,
                                       batch_size=64, learning_rate=0.01)


@pytest.fixture(scope="module")
def anomaly_data():
    """Log-mel images of 10 train + 6 test clips per class (Bearing, Healthy, Piston), labels, splits."""
    clips, labels, splits = machine_dataset(per_class_train=10, per_class_test=6, seed=0)
    return log_mel_images(clips, SPECTROGRAM), labels, splits


def poisoned(log_mel: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """A copy in which every clip a detector must not learn from (a fault, or any test clip) is NaN:
    if any of them reached a fit, the fitted statistics or weights would be NaN."""
    images = log_mel.copy()
    images[(labels != HEALTHY) | (splits != "train")] = np.nan
    return images


@pytest.mark.parametrize("detector", [MahalanobisDetector(), KnnDetector(n_neighbors=2)], ids=["mahalanobis", "knn"])
def test_statistical_detectors_fit_healthy_clips_only(anomaly_data, detector, tmp_path):
    log_mel, labels, splits = anomaly_data
    train = splits == "train"
    images = poisoned(log_mel, labels, splits)
    detector.fit(images[train], labels[train], CLASSES, "Healthy")
    assert detector.n_fit_clips == 10
    # The same detector fitted on the healthy train clips alone stores byte-identical arrays.
    alone = type(detector)(**({"n_neighbors": 2} if isinstance(detector, KnnDetector) else {}))
    healthy = train & (labels == HEALTHY)
    alone.fit(log_mel[healthy], labels[healthy], CLASSES, "Healthy")
    detector.save(tmp_path / "mixed")
    alone.save(tmp_path / "alone")
    assert (tmp_path / "mixed" / ARRAYS_FILE).read_bytes() == (tmp_path / "alone" / ARRAYS_FILE).read_bytes()
    # ... and it separates the synthetic faults from healthy test clips.
    test = splits == "test"
    scores = detector.score(log_mel[test])
    assert np.isfinite(scores).all()
    assert roc_auc(labels[test] != HEALTHY, scores) == 1.0


def test_fit_refuses_data_without_the_normal_class(anomaly_data):
    log_mel, labels, _ = anomaly_data
    faults = labels != HEALTHY
    with pytest.raises(AnomalyModelError, match="no clip of the normal class 'Healthy'"):
        MahalanobisDetector().fit(log_mel[faults], labels[faults], CLASSES, "Healthy")
    with pytest.raises(VapmError, match="not among the classes"):
        MahalanobisDetector().fit(log_mel, labels, CLASSES, "Normal")


def test_pipeline_fit_uses_healthy_train_clips_only(anomaly_data, tmp_path):
    log_mel, labels, splits = anomaly_data
    settings = AnomalySettings(method="mahalanobis", cv_folds=5)
    model = fit_anomaly_model(poisoned(log_mel, labels, splits), labels, splits, CLASSES, settings=settings,
                              spectrogram=SPECTROGRAM, seed=1)
    healthy_train = np.flatnonzero((labels == HEALTHY) & (splits == "train"))
    np.testing.assert_array_equal(model.fit_rows, healthy_train)  # cross-validation: the final fit uses all of them
    assert np.isfinite(model.normal_scores).all() and np.isfinite(model.threshold.value)
    # Identical to a model given only those clips.
    alone = fit_anomaly_model(log_mel[healthy_train], labels[healthy_train], splits[healthy_train], CLASSES,
                              settings=settings, spectrogram=SPECTROGRAM, seed=1)
    assert alone.threshold == model.threshold
    # Holdout: the validation clips are left out of the fit too.
    holdout = fit_anomaly_model(log_mel, labels, splits, CLASSES, spectrogram=SPECTROGRAM, seed=1,
                                settings=AnomalySettings(threshold_method="holdout", validation_fraction=0.3))
    assert len(holdout.fit_rows) == 7 and set(holdout.fit_rows) < set(healthy_train)
    assert holdout.threshold.n_normal_scores == 3


def test_model_saves_and_loads_to_the_same_scores_and_bytes(anomaly_data, tmp_path):
    log_mel, labels, splits = anomaly_data
    settings = AnomalySettings(method="knn", n_neighbors=2)
    model = fit_anomaly_model(log_mel, labels, splits, CLASSES, settings=settings, spectrogram=SPECTROGRAM, seed=1)
    model.save(tmp_path / "first")
    loaded = AnomalyModel.load(tmp_path / "first")
    test = splits == "test"
    np.testing.assert_array_equal(loaded.score(log_mel[test]), model.score(log_mel[test]))
    assert loaded.threshold == model.threshold and loaded.spectrogram == SPECTROGRAM
    loaded.save(tmp_path / "second")
    refit = fit_anomaly_model(log_mel, labels, splits, CLASSES, settings=settings, spectrogram=SPECTROGRAM, seed=1)
    refit.save(tmp_path / "third")
    files = sorted(path.relative_to(tmp_path / "first") for path in (tmp_path / "first").rglob("*") if path.is_file())
    assert [str(path) for path in files] == ["anomaly.json", "detector/arrays.npz", "detector/detector.json"]
    for path in files:  # no timestamps: saving again, or refitting with the same seed, gives the same bytes
        assert (tmp_path / "second" / path).read_bytes() == (tmp_path / "first" / path).read_bytes()
        assert (tmp_path / "third" / path).read_bytes() == (tmp_path / "first" / path).read_bytes()


def test_detector_refuses_images_with_other_mel_bands(anomaly_data):
    log_mel, labels, splits = anomaly_data
    detector = MahalanobisDetector().fit(log_mel, labels, CLASSES, "Healthy")
    with pytest.raises(AnomalyModelError, match="16 mel bands"):
        detector.score(log_mel[:, :8])
    with pytest.raises(AnomalyModelError, match="not fitted"):
        MahalanobisDetector().score(log_mel)


def test_autoencoder_is_seeded_healthy_only_and_round_trips(anomaly_data, tmp_path):
    log_mel, labels, splits = anomaly_data
    train, test = splits == "train", splits == "test"
    images = poisoned(log_mel, labels, splits)
    first = AutoencoderDetector(TINY_AUTOENCODER, seed=5).fit(images[train], labels[train], CLASSES, "Healthy")
    second = AutoencoderDetector(TINY_AUTOENCODER, seed=5).fit(images[train], labels[train], CLASSES, "Healthy")
    assert np.isfinite(first.final_loss)  # a NaN fault window in the fit would make the loss NaN
    # The second fit reuses the first's compiled trainer, reset to its initial state: it must end with
    # exactly the weights of the first, freshly built one.
    for a, b in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    scores = first.score(log_mel[test])
    assert scores.shape == (int(test.sum()),) and np.isfinite(scores).all()
    first.save(tmp_path / "autoencoder")
    loaded = load_detector(tmp_path / "autoencoder")
    assert isinstance(loaded, AutoencoderDetector) and loaded.settings == TINY_AUTOENCODER
    np.testing.assert_allclose(loaded.score(log_mel[test]), scores, rtol=1e-6)


def test_knn_distances_in_numpy_equal_scipys_cdist(anomaly_data, monkeypatch):
    """Scoring computes cdist's Euclidean distances in NumPy (predict loads no SciPy): the same values within float64
    rounding of a sum of n squares (relative n * 2**-53 on the squared distance), also when computed in blocks."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 40)) * 5, rng.normal(size=(11, 40)) * 5
    b[3] = a[5]  # a zero distance
    expected = cdist(a, b)
    tolerance = 40 * 2.0 ** -53 * expected + 1e-300
    assert np.all(np.abs(euclidean_distances(a, b) - expected) <= tolerance)
    monkeypatch.setattr("vapm.models.acoustic_anomaly.detectors._DISTANCE_BLOCK_VALUES", 40 * 11 * 4)  # 4-row blocks
    assert np.all(np.abs(euclidean_distances(a, b) - expected) <= tolerance)
    assert euclidean_distances(a, b)[5, 3] == 0.0

    log_mel, labels, splits = anomaly_data
    detector = KnnDetector(n_neighbors=2).fit(log_mel[splits == "train"], labels[splits == "train"], CLASSES,
                                              "Healthy")
    test = log_mel[splits == "test"]
    distances = cdist(detector._standardised(test[:, detector.bands]), detector.reference)
    with_cdist = np.sort(distances, axis=1)[:, :2].mean(axis=1)
    np.testing.assert_allclose(detector.score(test), with_cdist, rtol=1e-13, atol=0)
