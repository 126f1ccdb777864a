"""How a classifier's answer on the line treats familiar and shifted inputs: the share of each that it flags as
unfamiliar (README "Unfamiliar inputs"; issue 26's evaluation).

Familiar items are the test split. Shifted ones are built from them (vapm.data.shifts): for recordings, the
decoded test clips at gain x0.01 and x100 (clipped), with white noise at 0 dB SNR, replaced by a 2 kHz tone or by
silence, and time-reversed; for images, the test images at the model's size made blank or saturated, inverted,
blurred, rotated 45 degrees with black corners, and the other modality's spectrograms drawn as images. Each goes
through the loaded model exactly as a file on the line does (`LoadedModel.answer_decoded`: input checks, the
exported model, the flag), so these shares are what `vapm predict`, the served model and the monitor do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.config import paths
from vapm.data.shifts import clip_shifts, image_shifts
from vapm.serving.loading import LoadedModel, load_model

FAMILIAR = "test (familiar)"


def _npz_test(folder: Path, key: str = "images") -> tuple[np.ndarray, np.ndarray] | None:
    path = Path(folder) / "features.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        test = data["splits"].astype(str) == "test"
        return data[key][test], data["labels"][test].astype(np.int64)


def _test_clips(interim: Path) -> tuple[np.ndarray, np.ndarray] | None:
    import pandas as pd

    manifest_path, clips_path = Path(interim) / "manifest.parquet", Path(interim) / "clips.npy"
    if not (manifest_path.is_file() and clips_path.is_file()):
        return None
    manifest = pd.read_parquet(manifest_path)
    if "item" in manifest.columns:
        manifest = manifest.sort_values("item", kind="stable")
    rows = np.flatnonzero(manifest["split"].astype(str).to_numpy() == "test")
    return np.asarray(np.load(clips_path, mmap_mode="r")[rows]), manifest["label"].to_numpy(np.int64)[rows]


def familiar_and_shifted(model: LoadedModel, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """{kind: decoded items} for the model's modality (the test split first), and the test labels; None when the
    model's input cannot be rebuilt from the pipeline's data (features from an external table)."""
    kind = model.input.kind
    if kind == "image":
        found = _npz_test(paths.IMAGE_FEATURES)
        if found is None:
            return None
        images, labels = found
        other = _npz_test(paths.ACOUSTIC_IMAGE_FEATURES)
        return {FAMILIAR: images, **image_shifts(images, None if other is None else other[0])}, labels
    if kind in ("acoustic_image", "wavelet"):
        found = _test_clips(paths.ACOUSTIC_INTERIM)
        if found is None:
            return None
        clips, labels = found
        return {FAMILIAR: clips, **clip_shifts(clips, model.input.audio.sample_rate, seed)}, labels
    return None


def flag_shares(model: LoadedModel, items: dict[str, np.ndarray], labels: np.ndarray,
                batch: int = 64) -> dict[str, dict[str, Any]]:
    """Per kind of input: how many, the share flagged unfamiliar, by the input checks and by the feature score,
    and (familiar items) the accuracy of the answers."""
    shares = {}
    for kind, decoded in items.items():
        answers = []
        for start in range(0, len(decoded), batch):
            part = [np.asarray(item) for item in decoded[start:start + batch]]
            answers += model.answer_decoded([f"{kind}[{start + i}]" for i in range(len(part))], part)
        flagged = np.array([answer["unfamiliar"] for answer in answers], dtype=bool)
        by_score = np.array([answer.get("unfamiliar_score", -np.inf) > answer.get("unfamiliar_threshold", np.inf)
                             for answer in answers], dtype=bool)
        # The distance adds at most one reason, after the checks' own: any more came from the input checks.
        by_checks = np.array([len(answer["unfamiliar_reasons"]) > int(score)
                              for answer, score in zip(answers, by_score)], dtype=bool)
        shares[kind] = {"n": len(answers), "flagged": float(flagged.mean()) if answers else 0.0,
                        "by_checks": float(by_checks.mean()) if answers else 0.0,
                        "by_score": float(by_score.mean()) if answers else 0.0}
        if kind == FAMILIAR:
            predicted = np.array([model.classes.index(answer["class"]) for answer in answers])
            shares[kind]["accuracy"] = float(np.mean(predicted == labels)) if answers else 0.0
    return shares


def evaluate_shifted_inputs(model_dir: Path, seed: int) -> dict[str, dict[str, Any]] | None:
    """The flag's shares for the model folder (loaded as the line loads it), or None when they cannot be built:
    a model saved before vapm flagged unfamiliar inputs (no `unfamiliar` in its record), or one whose inputs cannot
    be rebuilt from the pipeline's data."""
    import json

    record_path = Path(model_dir) / "record.json"
    if not record_path.is_file() or "unfamiliar" not in json.loads(record_path.read_text()):
        return None
    model = load_model(model_dir)
    built = familiar_and_shifted(model, seed)
    if built is None:
        return None
    return flag_shares(model, *built)
