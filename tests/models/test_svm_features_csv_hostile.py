"""acoustic_svm.features_csv that is not a CSV, or is empty: one clear error naming the file, no traceback."""
from __future__ import annotations

import pytest

from vapm.models import acoustic_svm
from vapm.models.components.data import TrainingError

CLASSES = ["Bearing", "Flywheel", "Healthy", "LIV", "LOV", "NRV", "Piston", "Riderbelt"]


@pytest.mark.parametrize("content, why", [
    (b"", "empty"),
    (b"\n\n\n", "empty"),
    (bytes(range(256)) * 40, "features.csv"),               # binary garbage: refused, whatever the parser saw
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "cannot be read as a CSV"),
    (b'a,"b\n' * 3, "cannot be read as a CSV"),              # an unterminated quote
    (b"1,2,3\n4,5,6,7,8\n", "cannot be read as a CSV"),      # ragged rows
])
def test_a_features_csv_that_is_no_csv_is_one_clear_error(tmp_path, content, why):
    path = tmp_path / "features.csv"
    path.write_bytes(content)
    with pytest.raises(TrainingError, match=why) as caught:
        acoustic_svm.load_features_csv(path, CLASSES, test_fraction=0.2, seed=0)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value).strip()


def test_a_folder_instead_of_a_file_is_named(tmp_path):
    with pytest.raises(TrainingError, match="not found"):
        acoustic_svm.load_features_csv(tmp_path, CLASSES, test_fraction=0.2, seed=0)
