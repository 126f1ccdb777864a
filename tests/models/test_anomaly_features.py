"""The detector's inputs come from the project's own log-mel code; settings fail with one-line messages."""
from __future__ import annotations

import numpy as np
import pytest

from tests.models.anomaly_synth import SPECTROGRAM, machine_clip
from vapm.config.settings import ParamsError
from vapm.data.features.acoustic import mfcc_logmel_image
from vapm.models.acoustic_anomaly import (AnomalySettings, anomaly_settings, frame_statistics, frame_windows,
                                          log_mel_images)
from vapm.models.acoustic_anomaly.features import active_bands


def test_log_mel_images_are_the_featurize_stages_log_mel_rows():
    rng = np.random.default_rng(0)
    clips = np.stack([machine_clip("Healthy", rng), machine_clip("Bearing", rng)])
    images = log_mel_images(clips, SPECTROGRAM)
    assert images.shape == (2, 16, 1 + clips.shape[1] // 128) and images.dtype == np.float32
    for clip, image in zip(clips, images):
        project = mfcc_logmel_image(clip, SPECTROGRAM.sample_rate, 13, 16, 256, 128, None, True)
        np.testing.assert_array_equal(image, project[13:])


def test_frame_windows_are_consecutive_frames_flattened_frame_by_frame():
    log_mel = np.arange(2 * 3 * 6, dtype=np.float32).reshape(2, 3, 6)  # 2 clips, 3 bands, 6 frames
    windows = frame_windows(log_mel, 4)
    assert windows.shape == (2, 3, 12)
    np.testing.assert_array_equal(windows[1, 2], log_mel[1, :, 2:6].T.reshape(-1))
    with pytest.raises(ValueError, match="context_frames"):
        frame_windows(log_mel, 7)


def test_frame_statistics_group_columns_by_statistic():
    log_mel = np.random.default_rng(1).normal(size=(4, 3, 50))
    features = frame_statistics(log_mel, ("mean", "std", "p90"))
    np.testing.assert_allclose(features[:, :3], log_mel.mean(axis=2))
    np.testing.assert_allclose(features[:, 3:6], log_mel.std(axis=2))
    np.testing.assert_allclose(features[:, 6:], np.percentile(log_mel, 90, axis=2))


def test_active_bands_keep_those_near_the_loudest():
    levels = np.array([-5.0, 0.0, -29.0, -31.0, -60.0])
    log_mel = np.broadcast_to(levels[None, :, None], (3, 5, 10))
    assert active_bands(log_mel, 30.0).tolist() == [0, 1, 2]
    assert active_bands(log_mel, None).tolist() == [0, 1, 2, 3, 4]


def test_settings_defaults_and_one_line_errors():
    assert anomaly_settings({}) == AnomalySettings()
    assert anomaly_settings(None).false_alarm_rate == 0.05
    settings = anomaly_settings({"method": "autoencoder", "autoencoder": {"epochs": 3}, "evaluation": {"snr_db": [5]}})
    assert settings.autoencoder.epochs == 3 and settings.evaluation.snr_db == (5.0,)
    assert settings.as_dict()["evaluation"]["noise_types"] == ["white", "pink"]
    for values, message in [({"method": "pca"}, "acoustic_anomaly.method: input should be"),
                            ({"false_alarm_rate": 1.5}, "acoustic_anomaly.false_alarm_rate: input should be less than 1"),
                            ({"thresold_method": "auto"}, "acoustic_anomaly.thresold_method: unknown key"),
                            ({"statistics": ["mean", "max"]}, "acoustic_anomaly.statistics"),
                            ({"band_floor_db": 0}, "acoustic_anomaly.band_floor_db"),
                            ({"autoencoder": {"hidden_units": []}}, "acoustic_anomaly.autoencoder.hidden_units"),
                            ({"evaluation": {"noise_types": ["brown"]}}, "acoustic_anomaly.evaluation.noise_types")]:
        with pytest.raises(ParamsError, match=None) as error:
            anomaly_settings(values)
        assert message in str(error.value) and "\n" not in str(error.value)
