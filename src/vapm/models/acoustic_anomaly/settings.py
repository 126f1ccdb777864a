"""The detector's knobs: the `acoustic_anomaly:` params section, validated like every other (vapm.config.settings).

`AnomalySettings` is the trainer's `Params`; missing keys take the defaults below. `anomaly_settings(mapping)`
validates a plain mapping and raises one `ParamsError` line naming every bad `acoustic_anomaly.<key>`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

from pydantic import BeforeValidator, Field, ValidationError, field_validator

from vapm.config.settings import ModelParams, ParamsError, Section, one_line_problems
from vapm.models.acoustic_anomaly.features import FRAME_STATISTICS
from vapm.models.acoustic_anomaly.noise import NOISE_TYPES

METHODS = ("mahalanobis", "knn", "autoencoder")
THRESHOLD_METHODS = ("auto", "holdout", "cross_validation")
SECTION = "acoustic_anomaly"


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


PositiveInts = Annotated[tuple[int, ...], BeforeValidator(_as_tuple), Field(min_length=1)]
Decibels = Annotated[tuple[float, ...], BeforeValidator(_as_tuple)]
Names = Annotated[tuple[str, ...], BeforeValidator(_as_tuple), Field(min_length=1)]


def _distinct_known(names: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names) or any(name not in known for name in names):
        raise ValueError(f"must be a non-empty list of distinct names from {list(known)}")
    return names


class AutoencoderSettings(Section):
    """Dense autoencoder on windows of consecutive log-mel frames (DCASE 2020-2023 Task 2 baseline style)."""

    context_frames: int = Field(5, ge=1)        # frames per window; the DCASE baseline uses 5
    hidden_units: PositiveInts = (128, 128, 128, 128)  # encoder layers (the decoder mirrors them)
    bottleneck_units: int = Field(8, ge=1)
    # 15 epochs of 64 windows: on the compressor subset's healthy train clips the reconstruction loss
    # of held-out healthy clips stops falling after ~12 such epochs (batches of 256 needed ~32 epochs,
    # at more CPU time in all).
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.001, gt=0, allow_inf_nan=False)

    @field_validator("hidden_units")
    @classmethod
    def _positive(cls, units: tuple[int, ...]) -> tuple[int, ...]:
        if any(unit < 1 for unit in units):
            raise ValueError("must be a non-empty list of positive integers")
        return units


class EvaluationSettings(Section):
    max_fpr: float = Field(0.1, gt=0, le=1)     # partial AUC over false-positive rates 0..max_fpr (DCASE: 0.1)
    bootstrap_resamples: int = Field(1000, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    snr_db: Decibels = (20.0, 10.0, 5.0, 0.0)  # signal-to-noise ratios of the noise sweep (may be empty)
    noise_types: Names = NOISE_TYPES

    @field_validator("noise_types")
    @classmethod
    def _known_noise(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _distinct_known(names, NOISE_TYPES)


class SpectrogramParams(Section):
    """How the detector turns a clip into log-mel frames (the same code as featurize's, its own settings)."""
    n_mels: int = Field(64, ge=1)
    n_fft: int = Field(2048, ge=16)
    hop_length: int = Field(512, ge=1)
    fmax: float | None = Field(None, gt=0)      # null = half the sample rate
    remove_dc: bool = True


class AnomalySettings(ModelParams):
    method: Literal["mahalanobis", "knn", "autoencoder"] = "mahalanobis"
    normal_class: str = Field("Healthy", min_length=1)
    false_alarm_rate: float = Field(0.05, gt=0, lt=1)  # target share of normal clips flagged abnormal
    threshold_method: Literal["auto", "holdout", "cross_validation"] = "auto"  # see threshold.py
    validation_fraction: float = Field(0.2, gt=0, lt=1)  # holdout: share of the normal train clips kept out
    cv_folds: int = Field(5, ge=2)              # cross_validation: folds over the normal train clips
    statistics: Names = ("mean", "std")         # mahalanobis / knn: per-band frame statistics
    n_neighbors: int = Field(3, ge=1)           # knn: score = mean distance to this many nearest normal clips
    band_floor_db: float | None = Field(30.0, gt=0, allow_inf_nan=False)  # watch bands within this many dB of
                                                                         # the loudest (None: all)
    spectrogram: SpectrogramParams = SpectrogramParams()
    autoencoder: AutoencoderSettings = AutoencoderSettings()
    evaluation: EvaluationSettings = EvaluationSettings()

    @field_validator("statistics")
    @classmethod
    def _known_statistics(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return _distinct_known(names, FRAME_STATISTICS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return self.model_dump(mode="json")


def anomaly_settings(values: Mapping[str, Any] | None) -> AnomalySettings:
    """Validated settings from an `acoustic_anomaly:` mapping; missing keys take the defaults above."""
    try:
        return AnomalySettings.model_validate(dict(values or {}))
    except ValidationError as err:
        raise ParamsError(one_line_problems(err, SECTION)) from None
