"""The detector's knobs (an `acoustic_anomaly:` params section) as validated, frozen dataclasses.

`anomaly_settings(section)` reads a plain mapping, fills defaults for missing keys and raises one-line
`ConfigError`s naming `acoustic_anomaly.<key>`; the dataclasses can also be built directly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from vapm.config import ConfigError
from vapm.models.acoustic_anomaly.features import FRAME_STATISTICS
from vapm.models.acoustic_anomaly.noise import NOISE_TYPES

METHODS = ("mahalanobis", "knn", "autoencoder")
THRESHOLD_METHODS = ("auto", "holdout", "cross_validation")
SECTION = "acoustic_anomaly"


@dataclass(frozen=True)
class AutoencoderSettings:
    """Dense autoencoder on windows of consecutive log-mel frames (DCASE 2020-2023 Task 2 baseline style)."""

    context_frames: int = 5             # frames per window; the DCASE baseline uses 5
    hidden_units: tuple[int, ...] = (128, 128, 128, 128)  # encoder layers (the decoder mirrors them)
    bottleneck_units: int = 8
    # 15 epochs of 64 windows: on the compressor subset's healthy train clips the reconstruction loss
    # of held-out healthy clips stops falling after ~12 such epochs (batches of 256 needed ~32 epochs,
    # at more CPU time in all).
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 0.001


@dataclass(frozen=True)
class EvaluationSettings:
    max_fpr: float = 0.1                # partial AUC over false-positive rates 0..max_fpr (DCASE: 0.1)
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    snr_db: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
    noise_types: tuple[str, ...] = NOISE_TYPES


@dataclass(frozen=True)
class AnomalySettings:
    method: str = "mahalanobis"
    normal_class: str = "Healthy"
    false_alarm_rate: float = 0.05      # target share of normal clips flagged abnormal
    threshold_method: str = "auto"      # auto | holdout | cross_validation (see threshold.py)
    validation_fraction: float = 0.2    # holdout: share of the normal train clips kept out of fitting
    cv_folds: int = 5                   # cross_validation: folds over the normal train clips
    statistics: tuple[str, ...] = ("mean", "std")  # mahalanobis / knn: per-band frame statistics
    n_neighbors: int = 3                # knn: score = mean distance to this many nearest normal clips
    band_floor_db: float | None = 30.0  # watch only mel bands within this many dB of the loudest (None: all)
    autoencoder: AutoencoderSettings = field(default_factory=AutoencoderSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return _lists(asdict(self))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    return value


def _fail(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{SECTION}.{key} must be {expected}, got {value!r}")


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"an integer >= {minimum}", value)
    return value


def _float(value: Any, key: str, low: float, high: float, *, low_open: bool = True, high_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, "a number", value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _fail(key, f"a number in {interval}", value)
    return float(value)


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(key, f"one of {list(choices)}", value)
    return value


def _names(value: Any, key: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    if (not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value)
            or any(item not in choices for item in value)):
        raise _fail(key, f"a non-empty list of distinct names from {list(choices)}", value)
    return tuple(value)


def _unknown_keys(values: Mapping[str, Any], cls: type, prefix: str) -> None:
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{SECTION}{prefix} has unknown keys {unknown}; known: {sorted(known)}")


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(key, "a mapping", value)
    return value


def autoencoder_settings(values: Mapping[str, Any]) -> AutoencoderSettings:
    _unknown_keys(values, AutoencoderSettings, ".autoencoder")
    default = AutoencoderSettings()
    get = lambda key: values.get(key, getattr(default, key))  # noqa: E731
    hidden = get("hidden_units")
    if (not isinstance(hidden, (list, tuple)) or not hidden
            or any(isinstance(units, bool) or not isinstance(units, int) or units < 1 for units in hidden)):
        raise _fail("autoencoder.hidden_units", "a non-empty list of positive integers", hidden)
    return AutoencoderSettings(
        context_frames=_int(get("context_frames"), "autoencoder.context_frames", 1),
        hidden_units=tuple(hidden),
        bottleneck_units=_int(get("bottleneck_units"), "autoencoder.bottleneck_units", 1),
        epochs=_int(get("epochs"), "autoencoder.epochs", 1),
        batch_size=_int(get("batch_size"), "autoencoder.batch_size", 1),
        learning_rate=_float(get("learning_rate"), "autoencoder.learning_rate", 0.0, math.inf))


def evaluation_settings(values: Mapping[str, Any]) -> EvaluationSettings:
    _unknown_keys(values, EvaluationSettings, ".evaluation")
    default = EvaluationSettings()
    get = lambda key: values.get(key, getattr(default, key))  # noqa: E731
    snrs = get("snr_db")
    if (not isinstance(snrs, (list, tuple))
            or any(isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr)
                   for snr in snrs)):
        raise _fail("evaluation.snr_db", "a list of signal-to-noise ratios in dB (may be empty)", snrs)
    return EvaluationSettings(
        max_fpr=_float(get("max_fpr"), "evaluation.max_fpr", 0.0, 1.0, high_open=False),
        bootstrap_resamples=_int(get("bootstrap_resamples"), "evaluation.bootstrap_resamples", 1),
        confidence=_float(get("confidence"), "evaluation.confidence", 0.0, 1.0),
        snr_db=tuple(float(snr) for snr in snrs),
        noise_types=_names(get("noise_types"), "evaluation.noise_types", NOISE_TYPES))


def anomaly_settings(values: Mapping[str, Any] | None) -> AnomalySettings:
    """Validated settings from an `acoustic_anomaly:` mapping; missing keys take the defaults above."""
    values = _mapping(values, "")
    _unknown_keys(values, AnomalySettings, "")
    default = AnomalySettings()
    get = lambda key: values.get(key, getattr(default, key))  # noqa: E731
    normal_class = get("normal_class")
    if not isinstance(normal_class, str) or not normal_class:
        raise _fail("normal_class", "a class name from audio.classes", normal_class)
    return AnomalySettings(
        method=_choice(get("method"), "method", METHODS),
        normal_class=normal_class,
        false_alarm_rate=_float(get("false_alarm_rate"), "false_alarm_rate", 0.0, 1.0),
        threshold_method=_choice(get("threshold_method"), "threshold_method", THRESHOLD_METHODS),
        validation_fraction=_float(get("validation_fraction"), "validation_fraction", 0.0, 1.0),
        cv_folds=_int(get("cv_folds"), "cv_folds", 2),
        statistics=_names(get("statistics"), "statistics", FRAME_STATISTICS),
        n_neighbors=_int(get("n_neighbors"), "n_neighbors", 1),
        band_floor_db=None if get("band_floor_db") is None else _float(get("band_floor_db"), "band_floor_db",
                                                                        0.0, math.inf),
        autoencoder=autoencoder_settings(_mapping(values.get("autoencoder"), "autoencoder")),
        evaluation=evaluation_settings(_mapping(values.get("evaluation"), "evaluation")))
