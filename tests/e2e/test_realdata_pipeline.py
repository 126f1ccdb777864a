"""The real datasets through the real pipeline: ingest -> featurize -> short trainings -> evaluate.

Uses ../shared/data (development machines and CI only); skipped when it is absent. The full-size run
with the shipped settings is the benchmark (`make bench`), not this test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARED_DATA, TINY_PIPELINE, copy_repo, git_commit, run, update_params

NEU_ZIP = SHARED_DATA / "NEU-data-TrainTest.zip"
WAV_ZIP = SHARED_DATA / "AirCompressor_Data_wav_subset.zip"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(not (NEU_ZIP.is_file() and WAV_ZIP.is_file()), reason=f"real data not found at {SHARED_DATA}"),
]


@pytest.fixture(scope="module")
def real_pipeline(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("vapm-real") / "repo")
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    # Links, not copies: DVC hashes what they point to, and the shared files stay read-only.
    (raw / NEU_ZIP.name).symlink_to(NEU_ZIP)
    (raw / WAV_ZIP.name).symlink_to(WAV_ZIP)
    update_params(repo, {**TINY_PIPELINE,
                         "ingest.vision_archive": f"data/raw/{NEU_ZIP.name}",
                         "ingest.acoustic_archive": f"data/raw/{WAV_ZIP.name}",
                         "train.epochs": 2, "train.batch_size": 64,
                         "acoustic_svm.C_grid": [1.0]})
    git_commit(repo, "real archives, short trainings")
    run(["dvc", "repro", "evaluate"], repo, timeout=1800)
    return repo


def test_real_archives_are_ingested_and_featurized(real_pipeline: Path):
    report = json.loads((real_pipeline / "metrics" / "ingest_report.json").read_text())
    assert report["vision"]["kept"]["total"] == 1799  # 1800 less the known duplicate
    assert [d["file"].rsplit("/", 1)[-1] for d in report["vision"]["duplicates"]] == ["patches_105.jpg"]
    assert report["acoustic"]["kept"]["total"] == 320
    vision = np.load(real_pipeline / "data" / "features" / "image" / "features.npz")
    assert vision["images"].shape == (1799, 32, 32) and vision["images"].dtype == np.uint8
    assert (vision["splits"] == "test").sum() == 72
    acoustic = np.load(real_pipeline / "data" / "features" / "acoustic_image" / "features.npz")
    assert acoustic["images"].shape == (320, 104, 98) and np.isfinite(acoustic["images"]).all()
    wavelet = pd.read_parquet(real_pipeline / "data" / "features" / "wavelet" / "features.parquet")
    assert wavelet.filter(like="wp_L").shape == (320, 254)


def test_short_trainings_on_real_data_produce_metrics(real_pipeline: Path):
    for model, n_test in [("vision_scratch", 72), ("vision_transfer", 72), ("acoustic_svm", 64), ("acoustic_cnn", 64)]:
        scores = json.loads((real_pipeline / "metrics" / "scores" / f"{model}.json").read_text())
        assert scores["n"] == n_test, model
    # The wavelet features separate the real compressor states even with one C and no tuning.
    assert json.loads((real_pipeline / "metrics" / "scores" / "acoustic_svm.json").read_text())["acc"] >= 0.9


def test_predict_classifies_a_real_image_and_clip(real_pipeline: Path, tmp_path: Path):
    import zipfile

    with zipfile.ZipFile(NEU_ZIP) as archive:
        member = next(n for n in archive.namelist() if "/test/Scratches/" in n and n.endswith(".jpg"))
        image = tmp_path / "scratch.jpg"
        image.write_bytes(archive.read(member))
    with zipfile.ZipFile(WAV_ZIP) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".wav"))
        clip = tmp_path / "clip.wav"
        clip.write_bytes(archive.read(member))
    proc = run(["python", "-m", "vapm.cli.predict", "models/vision_scratch", str(image), "--json"], real_pipeline)
    result = json.loads(proc.stdout)
    assert result[0]["class"] in json.loads((real_pipeline / "models/vision_scratch/record.json").read_text())["classes"]
    assert sum(result[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    proc = run(["python", "-m", "vapm.cli.predict", "models/acoustic_svm", str(clip)], real_pipeline)
    assert proc.stdout.startswith(f"{clip}: ")
