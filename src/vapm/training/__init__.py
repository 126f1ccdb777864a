"""Training any registered model: its data, the fit loop of the neural models, saving and logging.

- `job`: `TrainingJob` (what a trainer gets) and `Trained` (what it returns).
- `data`: feature folders -> `FeatureSet`; the fit/validation/test split.
- `keras_fit`: compiling, fitting (with DVCLive per-epoch logs) and predicting for Keras classifiers.
- `artefacts`: one way to save, load, score with and log a trained model, for Keras and scikit-learn.
- `run`: the train stage: load, train, save-and-log.
"""
from vapm.training.data import DataSplit, FeatureSet, TrainingError, load_features, split_indices
from vapm.training.job import Trained, TrainingJob

__all__ = ["DataSplit", "FeatureSet", "Trained", "TrainingError", "TrainingJob", "load_features", "split_indices"]
