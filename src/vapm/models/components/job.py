"""What a trainer module gets (`TrainingJob`) and what it returns (`Trained`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vapm.models.components.data import DataSplit, FeatureSet

if TYPE_CHECKING:  # annotations only: a trainer package's __init__ imports this, and so does predict (no pandas)
    import pandas as pd

ScoreKind = Literal["probability", "decision", "anomaly"]


@dataclass(frozen=True)
class TrainingJob:
    name: str                     # the model's registry name
    params: Any                   # its params section, validated (an instance of its trainer's `Params`)
    train: Any                    # the shared `train` settings merged with its overrides (TrainSettings), or None
    features: FeatureSet
    class_names: list[str]
    seed: int
    live_dir: Path | None = None  # where per-epoch logs go (DVCLive); None: not logged
    settings: Any = None          # the whole validated params.yaml, for trainers that need more (rare)
    data_manifest_sha256: str | None = None  # the ingest manifest the features came from


@dataclass
class Trained:
    """A fitted model and everything the stage saves and logs about it."""
    model: Any                            # saved with the registry entry's artefact kind
    split: DataSplit
    test_scores: np.ndarray               # (n_test, n_classes) class scores; (n_test,) anomaly scores
    score_kind: ScoreKind                 # probabilities, decision-function values, or anomaly scores
    history: pd.DataFrame | None = None   # one row per epoch (epoch, phase, loss, accuracy, val_loss, val_accuracy)
    details: dict[str, Any] = field(default_factory=dict)   # saved in the model's record: deterministic only
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # extra CSV files saved with the model
    documents: dict[str, Any] = field(default_factory=dict)  # extra JSON files saved with the model
    metrics: dict[str, float] = field(default_factory=dict)  # extra MLflow metrics
    seconds: dict[str, float] = field(default_factory=dict)  # timings: MLflow and the console, never DVC outputs
    features: FeatureSet | None = None    # the data really used, when the trainer read other data than the job's

    @property
    def test_predictions(self) -> np.ndarray:
        if self.score_kind == "anomaly":
            raise ValueError("a detector has scores, not class predictions")
        return np.asarray(self.test_scores).argmax(axis=1).astype(np.int64)
