"""The light runtime (the default, `onnx`) of the linear SVM and the statistical anomaly detectors: NumPy scores that
equal scikit-learn's, deterministic linear.npz, fallbacks to the native runtime, and no scikit-learn, skops, SciPy,
pandas or neural-network library loaded to answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.serving import light_models
from tests.serving.light_models import CLASSES, SMALL_AUDIO, svm_pipeline
from vapm.artefacts import RUNTIMES, ArtefactError, artefact, linear
from vapm.artefacts.linear import LINEAR_FILE, LinearScorer, check_scorer, scorer_of
from vapm.artefacts.anomaly import SCORE_TOLERANCE
from vapm.artefacts.sklearn import SklearnArtefact
from vapm.serving.loading import load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"sklearn", "skops", "scipy", "pandas", "tensorflow", "keras", "torch"}


def _blobs(n_classes: int, per_class: int = 20, n_features: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(n_classes, n_features))
    y = np.repeat(np.arange(n_classes), per_class)
    # Features on different scales and offsets, as the wavelet energies are (log10 of mean squares).
    x = (centres[y] + rng.normal(size=(y.size, n_features))) * rng.uniform(0.1, 10, n_features) - 3.0
    return x, y, [f"f{i}" for i in range(n_features)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("light")
    x, _ = light_models.clips(SMALL_AUDIO, 1, seed=7)
    (root / "clip.wav").write_bytes(light_models.wav_bytes(x[0], SMALL_AUDIO))
    return {"svm": light_models.build_svm_folder(root / "acoustic_svm"),
            "mahalanobis": light_models.build_anomaly_folder(root / "acoustic_anomaly"),
            "knn": light_models.build_anomaly_folder(root / "acoustic_anomaly_knn", method="knn"),
            "autoencoder": light_models.build_anomaly_folder(root / "acoustic_anomaly_ae", method="autoencoder"),
            "clip": root / "clip.wav"}


@pytest.mark.parametrize("n_classes", [4, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_scores_equal_the_pipelines_decision_function(n_classes, dtype):
    x, y, names = _blobs(n_classes)
    pipeline = svm_pipeline(x, y, names)
    scorer = scorer_of(linear.linear_parts(pipeline))
    rows = np.random.default_rng(1).normal(size=(50, x.shape[1])) * x.std(axis=0) + x.mean(axis=0)
    rows = rows.astype(dtype)
    expected = pipeline.decision_function(pd.DataFrame(rows, columns=names))
    got = scorer.decision_function(rows)
    assert got.shape == expected.shape and got.dtype == np.float64
    # The same float operations in the same order: within float64 rounding of an n-term dot product.
    n, u = x.shape[1] + 1, 2.0 ** -53
    z = np.abs(scorer.standardised(rows).astype(np.float64))
    bound = (2 * n * u / (1 - n * u) * (z @ np.abs(scorer.coef).T + np.abs(scorer.intercept))).reshape(got.shape)
    assert np.all(np.abs(got - expected) <= bound)
    assert np.array_equal(scorer.predict(rows), pipeline.predict(pd.DataFrame(rows, columns=names)))
    assert np.array_equal(scorer.classes_, pipeline.classes_) and list(scorer.feature_names_in_) == names
    check_scorer(pipeline, scorer, rows)  # what save runs


def test_linear_npz_has_the_same_bytes_when_saved_again(tmp_path):
    x, y, names = _blobs(3)
    adapter = SklearnArtefact()
    adapter.save(svm_pipeline(x, y, names), tmp_path / "first")
    adapter.save(svm_pipeline(x, y, names), tmp_path / "second")  # refitted: a new object, the same model
    first = (tmp_path / "first" / LINEAR_FILE).read_bytes()
    assert (tmp_path / "second" / LINEAR_FILE).read_bytes() == first
    adapter.save(svm_pipeline(x, y, names), tmp_path / "first")
    assert (tmp_path / "first" / LINEAR_FILE).read_bytes() == first
    assert (tmp_path / "second" / "model.skops").read_bytes() == (tmp_path / "first" / "model.skops").read_bytes()


def test_a_scorer_that_disagrees_is_refused_in_one_line():
    x, y, names = _blobs(3)
    pipeline = svm_pipeline(x, y, names)
    parts = linear.linear_parts(pipeline)
    wrong = scorer_of({**parts, "coef": parts["coef"] * (1 + 1e-12)})  # a relative error far above rounding
    with pytest.raises(ArtefactError, match="differs from the pipeline's decision_function") as err:
        check_scorer(pipeline, wrong, x)
    assert "\n" not in str(err.value)


def test_other_pipelines_are_saved_and_loaded_natively(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, names = _blobs(3)
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))])
    model.fit(pd.DataFrame(x, columns=names), y)
    adapter = SklearnArtefact()
    (tmp_path / LINEAR_FILE).write_bytes(b"left by an earlier model")
    adapter.save(model, tmp_path)
    assert not (tmp_path / LINEAR_FILE).exists()  # no light form, and no stale one left behind
    for runtime in RUNTIMES:
        loaded = adapter.load(tmp_path, runtime)
        assert isinstance(loaded, Pipeline)
        np.testing.assert_array_equal(adapter.scores(loaded, x), model.predict_proba(pd.DataFrame(x, columns=names)))


def test_old_folders_without_linear_npz_load_natively(folders, tmp_path):
    old = tmp_path / "old_svm"
    old.mkdir()
    for name in ("model.skops", "record.json"):
        (old / name).write_bytes((folders["svm"] / name).read_bytes())
    files = [("clip.wav", folders["clip"].read_bytes())]
    light = load_model(folders["svm"])
    fallback = load_model(old)
    assert isinstance(light.model, LinearScorer) and type(fallback.model).__name__ == "Pipeline"
    assert fallback.predict_files(files) == light.predict_files(files)


def test_a_linear_npz_of_another_model_is_refused(folders, tmp_path):
    x, y, names = _blobs(3)
    SklearnArtefact().save(svm_pipeline(x, y, names), tmp_path)
    (tmp_path / LINEAR_FILE).write_bytes((folders["svm"] / LINEAR_FILE).read_bytes())
    with pytest.raises(ArtefactError, match="hashes differ.*--runtime native"):
        SklearnArtefact().load(tmp_path)
    assert type(SklearnArtefact().load(tmp_path, "native")).__name__ == "Pipeline"


def test_unknown_runtime_is_refused(folders):
    for kind, folder in (("sklearn", folders["svm"]), ("anomaly", folders["mahalanobis"])):
        with pytest.raises(ArtefactError, match="unknown runtime 'gpu'"):
            artefact(kind).load(folder, "gpu")


def test_the_autoencoder_answers_through_its_checked_onnx_export(folders):
    folder = folders["autoencoder"]
    assert json.loads((folder / "record.json").read_text())["runtimes"] == {"onnx": "detector/autoencoder.onnx"}
    files = [("clip.wav", folders["clip"].read_bytes())]
    light, native = load_model(folder), load_model(folder, runtime="native")
    assert type(light.model.detector.model).__name__ == "OnnxModel"
    (answer,), (expected,) = light.predict_files(files), native.predict_files(files)
    assert answer["status"] == expected["status"]
    assert answer["score"] == pytest.approx(expected["score"], rel=SCORE_TOLERANCE)


@pytest.mark.parametrize("name", ["svm", "mahalanobis", "knn"])
def test_every_runtime_gives_the_native_answers(folders, name):
    files = [("clip.wav", folders["clip"].read_bytes()), ("bad.txt", b"not a recording")]
    native = load_model(folders[name], runtime="native")
    answers = native.predict_files(files)
    assert "error" in answers[1] and ("class" in answers[0] or "status" in answers[0])
    for runtime in ("onnx",):
        light = load_model(folders[name], runtime=runtime)
        assert light.predict_files(files) == answers
        x = light.prepare(*files[0])[None]
        np.testing.assert_allclose(light.scores(x), native.scores(x), rtol=1e-12, atol=0)


def test_native_svm_scores_as_before(folders):
    """Before the light runtime, LoadedModel gave scikit-learn a table named by the input record's features."""
    loaded = load_model(folders["svm"], runtime="native")
    x = loaded.prepare("clip.wav", folders["clip"].read_bytes())[None]
    before = loaded.model.decision_function(pd.DataFrame(x, columns=loaded.input.feature_names))
    np.testing.assert_array_equal(loaded.scores(x), before)
    assert loaded.record["classes"] == CLASSES


_PROBE = """
import json, sys
from pathlib import Path

from vapm.data.features.records import record_from_dict

HEAVY = {heavy!r}
folders, clip = sys.argv[1:-1], Path(sys.argv[-1])
data = clip.read_bytes()
# The shared decode and feature code (vapm.data) runs first, so that what is added below is what loading and scoring
# the models add; neither part may bring in a heavy library.
for folder in folders:
    record_from_dict(json.loads((Path(folder) / "record.json").read_text())["input"]).prepare(clip.name, data)
before = set(sys.modules)

from vapm.serving.loading import load_model

answers = []
for folder in folders:
    model = load_model(folder)
    answers.append([type(model.model).__name__, model.predict_files([(clip.name, data)])[0]])
print(json.dumps({{"answers": answers,
                  "heavy": sorted(m for m in sys.modules if m.split('.')[0] in HEAVY),
                  "added": sorted(m for m in set(sys.modules) - before if m.split('.')[0] in HEAVY)}}))
"""


def test_loading_and_scoring_imports_no_heavy_library(folders):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "VAPM_NO_PROGRESS": "1"}
    names = ["svm", "mahalanobis", "knn", "autoencoder"]
    result = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY),
                             *[str(folders[name]) for name in names], str(folders["clip"])],
                            env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert [kind for kind, _ in probe["answers"]] == ["LinearScorer", "AnomalyModel", "AnomalyModel", "AnomalyModel"]
    for name, (_, answer) in zip(names, probe["answers"]):
        expected = load_model(folders[name], runtime="native").predict_files(
            [("clip.wav", folders["clip"].read_bytes())])[0]
        if name == "autoencoder":  # float32 networks in two runtimes: the same verdict, scores within tolerance
            assert answer["status"] == expected["status"]
            assert answer["score"] == pytest.approx(expected["score"], rel=SCORE_TOLERANCE)
        else:
            assert answer == expected
    assert probe["added"] == [] and probe["heavy"] == []


def test_predict_heatmap_is_refused_for_a_model_without_anomaly_maps(folders, tmp_path):
    command = [sys.executable, "-m", "vapm", "predict", str(folders["svm"]), str(folders["clip"]), "--heatmap",
               str(tmp_path / "maps")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    assert done.returncode == 2 and "gives no anomaly map: --heatmap is for a visual anomaly detector" in done.stderr
    assert not (tmp_path / "maps").exists() and done.stdout == ""
    assert not load_model(folders["svm"]).gives_maps


def test_the_served_svm_answers_lightly_and_refuses_an_anomaly_map_request(folders, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    from vapm.serving.pyfunc import encode_files, log_raw_file_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = log_raw_file_model(folders["svm"])
        served = mlflow.pyfunc.load_model(info.model_uri)
        request = pd.DataFrame(encode_files([folders["clip"]])["dataframe_records"])
        (answer,) = served.predict(request)
        with pytest.raises(MlflowException, match="gives no anomaly map"):
            served.predict(request, params={"anomaly_map": True})
        requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text()
    finally:
        mlflow.set_tracking_uri(None)
    (expected,) = load_model(folders["svm"]).predict_files([(folders["clip"].name, folders["clip"].read_bytes())])
    assert answer == expected and "tensorflow" not in requirements  # the light runtime: no TensorFlow to install
