"""A classifier's unfamiliar-input scorer in its model folder (unfamiliar.npz), with deterministic bytes.

The scorer and its threshold (vapm.models.components.unfamiliar.Familiarity) are plain arrays: class means and a
precision matrix for Mahalanobis, the training features and k for k-NN. They are scored with NumPy (k-NN with
scikit-learn's index), so every runtime flags the same inputs from the same features.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import write_npz
from vapm.models.components.unfamiliar import Familiarity

FAMILIARITY_FILE = "unfamiliar.npz"


def write_familiarity(folder: Path, familiarity: Familiarity) -> Path:
    return write_npz(Path(folder) / FAMILIARITY_FILE, familiarity.arrays())


def read_familiarity(folder: Path) -> Familiarity | None:
    """The folder's scorer, or None for a model saved without one (before vapm flagged unfamiliar inputs)."""
    path = Path(folder) / FAMILIARITY_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return Familiarity.from_arrays({key: data[key] for key in data.files})
    except (OSError, ValueError, KeyError) as err:
        raise ArtefactError(f"{path} cannot be read ({err}); retrain the model") from None
