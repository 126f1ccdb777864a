"""The kept members of an archive: their train/test split (the archive's own folders, else a seeded stratified
split), the counts per class and split, and the manifest row of each."""
from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from vapm.data.ingest.report import IngestReport

if TYPE_CHECKING:  # a type only: dataset imports this module
    from vapm.data.ingest.dataset import IngestSettings


@dataclass
class Candidate:
    info: zipfile.ZipInfo
    class_name: str
    archive_split: str | None
    sha256: str = ""
    pixels: int = 0  # an image's width x height from its header (0 for clips, or when the header is unreadable)

    @property
    def file(self) -> str:
        return self.info.filename

    @property
    def split(self) -> str | None:
        """The archive's split as the models use it: a validation folder joins train (vapm.data.ingest.labels)."""
        return "train" if self.archive_split == "validation" else self.archive_split


def assign_splits(kept: list[Candidate], classes: list[str], settings: IngestSettings, report: IngestReport,
                   fail: Callable[[str], Exception]) -> list[str]:
    """The archive's own train/test folders when it has them, else a seeded stratified split."""
    if not kept:
        raise fail("no usable files left")
    if report.split_source == "archive":
        return [candidate.split for candidate in kept]
    from sklearn.model_selection import train_test_split  # imported here: worker processes never need it

    labels = np.array([classes.index(candidate.class_name) for candidate in kept])
    try:
        _, test_items = train_test_split(np.arange(len(kept)), test_size=settings.test_fraction,
                                         stratify=labels, random_state=settings.seed)
    except ValueError as err:
        raise fail(f"cannot make a stratified split with ingest.test_fraction={settings.test_fraction}: {err}") from err
    splits = np.full(len(kept), "train", dtype=object)
    splits[test_items] = "test"
    return splits.tolist()


def count_kept(kept: list[Candidate], splits: list[str], classes: list[str], report: IngestReport) -> None:
    counts = Counter(zip((candidate.class_name for candidate in kept), splits))
    report.kept = {
        "total": len(kept),
        "train": splits.count("train"),
        "test": splits.count("test"),
        "per_class": {name: {"train": counts[name, "train"], "test": counts[name, "test"]} for name in classes},
    }


def archive_split_counts(kept: list[Candidate]) -> dict[str, int]:
    """How many kept items came from the archive's validation folders (they joined train), when any did."""
    from_validation = sum(1 for candidate in kept if candidate.archive_split == "validation")
    return {"from_validation_folders": from_validation} if from_validation else {}


def check_every_class_in_both_splits(report: IngestReport, fail: Callable[[str], Exception]) -> None:
    missing = [f"{name} has no {split} items" for name, counts in report.kept["per_class"].items()
               for split in ("train", "test") if counts[split] == 0]
    if missing:
        raise fail("every class needs train and test items: " + "; ".join(missing))


def manifest_frame(kept: list[Candidate], splits: list[str], details: list[dict[str, Any]], classes: list[str],
              archive: Path, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({
        "item": np.arange(len(kept), dtype=np.int64),
        "file": [candidate.file for candidate in kept],
        "class": [candidate.class_name for candidate in kept],
        "label": np.array([classes.index(candidate.class_name) for candidate in kept], dtype=np.int64),
        "split": splits,
        "sha256": [candidate.sha256 for candidate in kept],
        "source_archive": str(archive),
    })
    for name in columns:
        if name not in frame:
            frame[name] = [entry[name] for entry in details]
    dtypes = {"height": np.int64, "width": np.int64, "offset": np.int64, "source_samples": np.int64,
              "source_sample_rate": np.float64}
    return frame[columns].astype({name: dtype for name, dtype in dtypes.items() if name in columns})
