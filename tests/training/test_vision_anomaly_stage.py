"""train@vision_anomaly through the real pipeline: `dvc repro` of the sample data, the anomaly_data stage (a normal
class beside the defects, with masks) and the train stage in a copy of the repository; then the saved folder loaded
as the line loads it, and the evaluate stage's detector outputs with its anomaly maps scored against the masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vapm.core.hashing import file_sha256

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("vapm") / "repo")
    update_params(repo, {**TINY_PIPELINE, "vision_anomaly.normal_class": "Normal"})
    git_commit(repo, "tiny params for tests")
    proc = run(["dvc", "repro", "train@vision_anomaly"], repo, timeout=1200)
    assert "Running stage 'train@vision_anomaly'" in proc.stdout
    return repo


def test_the_stage_saves_a_detector_that_loads_and_scores_as_trained(trained: Path):
    from vapm.artefacts import ArtefactError, artefact

    folder = trained / "models" / "vision_anomaly"
    record = json.loads((folder / "record.json").read_text())
    assert (record["task"], record["artefact"], record["score_kind"]) == ("detector", "patchcore", "anomaly")
    assert record["details"]["normal_class"] == "Normal" and record["input"]["kind"] == "image"
    with np.load(trained / "data" / "features" / "anomaly_image" / "features.npz") as features:
        images, labels, splits = features["images"], features["labels"], features["splits"]
        assert record["classes"] == features["classes"].tolist()  # the anomaly data's own list, not vision.classes
    manifest = trained / "data" / "interim" / "vision_anomaly" / "manifest.parquet"
    assert record["data_manifest_sha256"] == file_sha256(manifest)
    normal_label = record["classes"].index("Normal")
    normal_train = set(np.flatnonzero((splits == "train") & (labels == normal_label)).tolist())
    patchcore = json.loads((folder / "patchcore.json").read_text())
    assert set(patchcore["fit_rows"]) <= normal_train  # the bank saw normal train images only
    assert patchcore["bank_shape"][0] <= patchcore["settings"]["max_bank_size"]
    predictions = pd.read_parquet(folder / "predictions.parquet")
    test = np.flatnonzero(splits == "test")
    assert len(predictions) == len(test) and predictions["normal"].tolist() == (labels[test] == normal_label).tolist()
    model = artefact("patchcore").load(folder, "native")
    scores = artefact("patchcore").scores(model, images[test])
    assert scores.tobytes() == predictions["score"].to_numpy(np.float64).tobytes()  # bit-identical after loading
    assert np.array_equal(model.is_abnormal(scores), predictions["abnormal"].to_numpy())
    # the light runtime: the extractor's ONNX export, checked at training, answers as Keras within its tolerance
    from vapm.artefacts.patchcore import SCORE_TOLERANCE

    assert record["runtimes"] == {"onnx": "extractor.onnx"}
    light = artefact("patchcore").load(folder)
    assert type(light.extractor).__name__ == "OnnxModel"
    light_scores = artefact("patchcore").scores(light, images[test])
    assert np.max(np.abs(light_scores - scores) / scores) <= SCORE_TOLERANCE
    assert np.array_equal(light.is_abnormal(light_scores), predictions["abnormal"].to_numpy())
    # without TensorFlow or Keras in the process
    probe = ("import sys, numpy as np\nfrom vapm.serving.loading import load_model\n"
             f"m = load_model({str(folder)!r})\nx = np.load({str(trained / 'probe.npy')!r})\n"
             "print(m.scores(x).tolist())\n"
             "assert not {'tensorflow', 'keras'} & set(sys.modules), sorted({'tensorflow', 'keras'} & set(sys.modules))")
    np.save(trained / "probe.npy", images[test][:3])
    shown = run(["python", "-c", probe], trained).stdout
    assert json.loads(shown.strip().splitlines()[-1]) == light_scores[:3].tolist()
    with pytest.raises(ArtefactError, match="unknown runtime"):
        artefact("patchcore").load(folder, "gpu")
    evaluation = json.loads((folder / "evaluation.json").read_text())["clean"]
    assert 0.0 <= evaluation["overall"]["auc"] <= 1.0
    assert set(evaluation["per_fault"]) == set(record["classes"]) - {"Normal"}


def test_a_forced_rerun_writes_the_same_bytes(trained: Path):
    folder = trained / "models" / "vision_anomaly"
    before = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
    run(["dvc", "repro", "-f", "-s", "train@vision_anomaly"], trained, timeout=1200)
    after = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
    assert after.keys() == before.keys() and Path("extractor.keras") in after and Path("bank.npy") in after
    assert [name for name in after if after[name] != before[name]] == []  # no dates, no host facts, same bank


def test_the_evaluate_stage_writes_the_detector_scores(trained: Path, tmp_path: Path):
    from vapm.evaluation.evaluate import evaluate_detector, open_live

    folder = trained / "models" / "vision_anomaly"
    classes = json.loads((folder / "record.json").read_text())["classes"]
    features = trained / "data" / "features" / "anomaly_image"
    scores = evaluate_detector("vision_anomaly", folder, classes, tmp_path, open_live(tmp_path), features)
    assert scores["n"] == len(pd.read_parquet(folder / "predictions.parquet"))
    assert scores["auc_lo"] <= scores["auc"] <= scores["auc_hi"] and 0 <= scores["far"] <= 1
    assert (tmp_path / "plots" / "images" / "roc" / "vision_anomaly.png").is_file()
    # the anomaly maps of the test images against their masks: the same numbers as segmentation's on maps made here
    from vapm.artefacts import artefact
    from vapm.evaluation.segmentation import pixel_scores

    predictions = pd.read_parquet(folder / "predictions.parquet")
    with np.load(features / "features.npz") as arrays:
        rows = [arrays["files"].tolist().index(f) for f in predictions["file"]]
        images, masks = arrays["images"][rows], arrays["masks"][rows]
    _, maps = artefact("patchcore").load(folder, "native").score_with_maps(images)
    assert maps.shape == images.shape
    expected = pixel_scores(maps, masks)
    assert (scores["pixel_auroc"], scores["aupro"]) == (round(expected["pixel_auroc"], 4), round(expected["aupro"], 4))
    details = json.loads((tmp_path / "details" / "vision_anomaly.json").read_text())["pixels"]
    assert details["images"] == len(predictions) and details["defect_images_without_mask"] == 0
    assert details["regions"] >= 1 and details["defect_pixels"] > 0
    assert (tmp_path / "plots" / "images" / "gallery" / "vision_anomaly.png").stat().st_size > 10000
    assert not (tmp_path / "plots" / "images" / "noise" / "vision_anomaly.png").exists()  # no noise sweep


def test_vapm_predict_says_normal_or_abnormal_and_writes_the_heatmap(trained: Path, tmp_path: Path):
    import subprocess
    import sys

    from PIL import Image

    folder = trained / "models" / "vision_anomaly"
    predictions = pd.read_parquet(folder / "predictions.parquet")
    with np.load(trained / "data" / "features" / "anomaly_image" / "features.npz") as arrays:
        files = arrays["files"].tolist()
        picked = [predictions[predictions["abnormal"] == flag]["file"].iloc[0] for flag in (False, True)]
        images = [arrays["images"][files.index(name)] for name in picked]
    parts = []
    for i, image in enumerate(images):
        parts.append(tmp_path / f"part_{i}.png")
        Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(parts[-1])
    parts.append(tmp_path / "notes.txt")
    parts[-1].write_text("not an image")
    command = [sys.executable, "-m", "vapm", "predict", str(folder), *map(str, parts), "--heatmap",
               str(tmp_path / "maps"), "--json"]  # no --runtime: the detector's own (native), not refused
    done = subprocess.run(command, cwd=trained, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # the text file fails alone; the images are answered
    answers = {Path(answer["file"]).name: answer for answer in json.loads(done.stdout)}
    assert "not .txt" in answers["notes.txt"]["error"]
    threshold = json.loads((folder / "patchcore.json").read_text())["threshold"]["value"]
    for name in ("part_0.png", "part_1.png"):
        answer = answers[name]
        assert answer["status"] == ("abnormal" if answer["score"] > threshold else "normal")
        assert answer["threshold"] == round(threshold, 6) and "anomaly_map" not in answer
        with Image.open(answer["heatmap"]) as png:
            assert png.format == "PNG" and png.size[0] > 300
    assert Path(answers["part_0.png"]["heatmap"]) == tmp_path / "maps" / "part_0.png"



def test_the_logged_mlflow_model_answers_with_the_anomaly_map_on_request(trained: Path, tmp_path: Path):
    import mlflow
    from mlflow.exceptions import MlflowException
    from PIL import Image

    from vapm.serving.pyfunc import encode_files, log_raw_file_model

    folder = trained / "models" / "vision_anomaly"
    with np.load(trained / "data" / "features" / "anomaly_image" / "features.npz") as arrays:
        image = arrays["images"][np.flatnonzero(arrays["splits"] == "test")[-1]]
    part = tmp_path / "part.png"
    Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(part)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = log_raw_file_model(folder)
        served = mlflow.pyfunc.load_model(info.model_uri)
        request = pd.DataFrame(encode_files([part])["dataframe_records"])
        (plain,) = served.predict(request)
        (mapped,) = served.predict(request, params={"anomaly_map": True})
        requirements = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text()
    finally:
        mlflow.set_tracking_uri(None)
    assert plain["status"] in ("normal", "abnormal") and "anomaly_map" not in plain
    assert "scipy==" in requirements and "tensorflow" not in requirements  # ONNX Runtime and NumPy answer
    heatmap = np.asarray(mapped["anomaly_map"])
    assert heatmap.shape == image.shape and {k: v for k, v in mapped.items() if k != "anomaly_map"} == plain
    # the served map is the detector's own, rounded to 4 decimals
    from vapm.serving.loading import load_model

    (local,) = load_model(folder).predict_files([(part.name, part.read_bytes())], maps=True)  # as served: ONNX
    np.testing.assert_array_equal(heatmap, np.round(local["anomaly_map"], 4))
    with pytest.raises(MlflowException, match="not base64"):
        served.predict(request.assign(data="not base64!"), params={"anomaly_map": True})


def test_the_monitor_alerts_on_an_abnormal_image_and_writes_its_heatmap_beside_the_alert(trained: Path,
                                                                                           tmp_path: Path):
    import io

    import jsonschema
    from PIL import Image

    from vapm.serving.monitor import Monitor, MonitorError
    from vapm.serving.warm_models import load_models

    folder = trained / "models" / "vision_anomaly"
    predictions = pd.read_parquet(folder / "predictions.parquet")
    with np.load(trained / "data" / "features" / "anomaly_image" / "features.npz") as arrays:
        files = arrays["files"].tolist()
        picked = {flag: predictions[predictions["abnormal"] == flag]["file"].iloc[0] for flag in (False, True)}
        images = {flag: arrays["images"][files.index(name)] for flag, name in picked.items()}
    incoming = tmp_path / "incoming"
    (incoming / "line 2").mkdir(parents=True)
    for flag, name in (("False", "good.png"), ("True", "line 2/bad$part.png")):
        Image.fromarray(np.clip(np.round(images[flag == "True"]), 0, 255).astype(np.uint8)).save(incoming / name)
    models = load_models([str(folder)], runtime=None)
    monitor = Monitor(incoming, models, out=io.StringIO())
    lines = {line["file"]: line for line in monitor.score(monitor.pending())}
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "alert.schema.json").read_text())
    for line in lines.values():
        jsonschema.validate(line, schema)
    (bad,) = lines["line 2/bad$part.png"]["results"]
    (good,) = lines["good.png"]["results"]
    assert bad["alert"] and bad["status"] == "abnormal" and not good["alert"] and "heatmap" not in good
    heatmap = Path(bad["heatmap"])
    assert heatmap.parent == incoming / "heatmaps" and heatmap.name.startswith("bad_part-")
    with Image.open(heatmap) as png:
        assert png.format == "PNG"
    assert f"heatmap {heatmap}" in monitor.out.getvalue()
    assert monitor.pending() == []  # its own pictures are never scored
    (tmp_path / "planted").symlink_to(incoming / "line 2")
    with pytest.raises(MonitorError, match="symbolic link"):
        Monitor(incoming, models, out=io.StringIO(), heatmap_dir=tmp_path / "planted")
