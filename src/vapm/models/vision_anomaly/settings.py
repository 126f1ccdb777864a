"""The `vision_anomaly:` params section, validated like every other (vapm.config.settings)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from vapm.config.settings import ModelParams, Section
from vapm.models.vision_anomaly.features import DEFAULT_LAYERS


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


LayerNames = Annotated[tuple[str, ...], BeforeValidator(_as_tuple), Field(min_length=1, max_length=4)]


class EvaluationSettings(Section):
    max_fpr: float = Field(0.1, gt=0, le=1)     # partial AUC over false-alarm rates 0..max_fpr
    bootstrap_resamples: int = Field(1000, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)


class Params(ModelParams):
    normal_class: str | None = Field(None, min_length=1)  # one of its input's classes (others: anomalies);
                                                          # None: the class with the most train images
    base: Literal["efficientnet_lite0"] = "efficientnet_lite0"
    weights: str | None = "imagenet"                     # imagenet (installed with vapm) | none | path of a .pth file
    input_size: int = Field(224, ge=32, le=640)          # the base's input side; grey images are resized to it
    layers: LayerNames = DEFAULT_LAYERS                  # the base's layers giving patch features, shallowest first
    feature_dim: int | None = Field(None, ge=1)          # channels pooled to this (adaptive average); None: all
    coreset_fraction: float = Field(0.1, gt=0, le=1)     # share of the normal patches kept in the memory bank
    max_bank_size: int = Field(10000, ge=1)              # ... but never more than this many patches
    projection_dim: int = Field(128, ge=1)               # random projection the coreset's distances are taken on
    n_neighbors: int = Field(9, ge=1)                    # image score reweighting (1: the largest patch score)
    map_sigma: float = Field(4.0, ge=0)                  # Gaussian smoothing of the anomaly map, in image pixels
    false_alarm_rate: float = Field(0.05, gt=0, lt=1)    # target share of normal images flagged abnormal
    threshold_method: Literal["auto", "holdout", "cross_validation"] = "auto"
    validation_fraction: float = Field(0.2, gt=0, lt=1)  # holdout: normal train images kept out of the bank
    cv_folds: int = Field(5, ge=2)                       # cross_validation: folds over the normal train images
    batch_size: int = Field(16, ge=1)                    # images per pass through the base
    evaluation: EvaluationSettings = EvaluationSettings()

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
