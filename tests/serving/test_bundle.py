"""`vapm export`: a network as a self-contained bundle whose predict.py answers as `vapm predict` does, in an
environment that holds only numpy, onnxruntime, pillow and soundfile."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from tests.helpers import REPO_ROOT
from tests.serving.test_serving import (
    AUDIO,
    AUDIO_CLASSES,
    build_acoustic_model,
    build_vision_model,
)
from vapm.cli import export as export_cli
from vapm.data.features.records import AcousticImageRecord, AudioInput
from vapm.data.synth.acoustic import render_clip
from vapm.data.synth.vision import render_defect
from vapm.serving import bundle_program
from vapm.serving.bundle import calibration_rows, compare_int8
from vapm.serving.loading import load_model

BUNDLE_NEEDS = ("numpy", "onnxruntime", "pillow", "soundfile")
# A whole-number rate, so a WAV can be at exactly the model's rate (the pipeline's 50000/3 Hz cannot: .dat text).
WAV_RATE = 16_000.0
WAV_RECORD = AcousticImageRecord(audio=AudioInput(sample_rate=WAV_RATE, clip_samples=AUDIO.clip_samples,
                                                  length_tolerance=0.02),
                                 n_mfcc=40, n_mels=64, mfcc_mel_bands=128, n_fft=2048, hop_length=512,
                                 fmax=WAV_RATE / 2, remove_dc=True)
VISION_CLASSES = ["Crazing", "Patches", "Scratches"]


def needed_distributions(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The distributions and, transitively, what they require (no extras), as this interpreter has them."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = canonicalize_name(dist.metadata["Name"])
        if key in found:
            continue
        found[key] = dist
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def bare_environment(folder: Path) -> Path:
    """A venv without pip whose site-packages links only the bundle's distributions (offline, in a second)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python*/site-packages"))
    for dist in needed_distributions(BUNDLE_NEEDS):
        tops = {Path(str(file)).parts[0] for file in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return folder / "bin" / "python"


def bare_run(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two tiny trained networks, their bundles, a bare environment and raw files for both."""
    root = tmp_path_factory.mktemp("bundle")
    build_acoustic_model(root / "models" / "acoustic_cnn", WAV_RECORD)
    build_vision_model(root / "models" / "vision_scratch")
    for name in ("acoustic_cnn", "vision_scratch"):
        assert export_cli.main([str(root / "models" / name), str(root / "bundles" / name)]) == 0
    rng = np.random.default_rng(5)
    for i, state in enumerate(AUDIO_CLASSES):
        clip = render_clip(state, AUDIO.clip_samples, WAV_RATE, rng)
        stereo = np.stack([clip, 0.5 * clip], axis=1) / np.abs(clip).max() * 0.5
        sf.write(root / f"{state}.wav", stereo if i == 0 else stereo[:, 0], int(WAV_RATE), subtype="PCM_16")
    (root / "reading.dat").write_text("\n".join(f"{v:.6f}" for v in render_clip("Bearing", 49_500, WAV_RATE, rng)))
    clip = render_clip("Healthy", 132_300, 44_100.0, rng)
    sf.write(root / "cd.wav", clip / np.abs(clip).max() * 0.5, 44_100, subtype="PCM_16")
    Image.fromarray(render_defect("Patches", 200, np.random.default_rng(7))).save(root / "strip.jpg", quality=90)
    wide = np.concatenate([render_defect("Scratches", 120, np.random.default_rng(8))] * 2, axis=1)
    rgba = np.stack([wide, wide // 2, 255 - wide, np.where(wide > 100, 255, 40).astype(np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(root / "wide.png")
    return {"root": root, "python": bare_environment(root / "venv")}


def test_the_bare_environment_has_no_vapm_tensorflow_scipy_or_sklearn(work):
    probe = ("import importlib\n"
             "for name in ('tensorflow', 'vapm', 'scipy', 'sklearn', 'librosa', 'pandas'):\n"
             "    try:\n        importlib.import_module(name)\n        print(name, 'imported')\n"
             "    except ModuleNotFoundError:\n        print(name, 'missing')\n"
             "import numpy, onnxruntime, PIL, soundfile\nprint('bundle needs: ok')\n")
    proc = bare_run(work["python"], "-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == [f"{n} missing" for n in
                                            ("tensorflow", "vapm", "scipy", "sklearn", "librosa", "pandas")] + [
        "bundle needs: ok"]


def answers_of(work, name: str, files: list[str], *options: str) -> tuple[list[dict], subprocess.CompletedProcess]:
    paths = [str(work["root"] / f) for f in files]
    proc = bare_run(work["python"], str(work["root"] / "bundles" / name / "predict.py"), *paths, "--json", *options)
    return json.loads(proc.stdout), proc


def vapm_answers(work, name: str, files: list[str]) -> list[dict]:
    model = load_model(work["root"] / "models" / name)
    return model.predict_files([(str(work["root"] / f), (work["root"] / f).read_bytes()) for f in files])


def assert_same(ours: list[dict], theirs: list[dict], tolerance: float) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == {"file", "model", "class", "probability", "probabilities"}
        assert set(b) - set(a) == {"unfamiliar", "unfamiliar_reasons", "unfamiliar_score", "unfamiliar_threshold"}
        assert (a["file"], a["model"], a["class"]) == (b["file"], b["model"], b["class"])
        assert list(a["probabilities"]) == list(b["probabilities"])
        for c in a["probabilities"]:
            assert a["probabilities"][c] == pytest.approx(b["probabilities"][c], abs=tolerance)
        assert a["probability"] == pytest.approx(b["probability"], abs=tolerance)


def test_a_sound_bundle_answers_as_vapm_predict(work):
    files = [f"{state}.wav" for state in AUDIO_CLASSES] + ["reading.dat"]
    ours, proc = answers_of(work, "acoustic_cnn", files)
    assert proc.returncode == 0, proc.stderr
    # The features differ in float rounding only: plain NumPy products and log10 where vapm sums the mel
    # projection in a fixed order and rounds log10 to float32 (< 1e-5 dB on values up to ~100 dB).
    assert_same(ours, vapm_answers(work, "acoustic_cnn", files), tolerance=1e-4)


def test_a_sound_bundle_refuses_another_rate_in_one_line_naming_the_rate(work):
    ours, proc = answers_of(work, "acoustic_cnn", ["cd.wav", "Healthy.wav"])
    assert proc.returncode == 1
    assert ours[0]["file"].endswith("cd.wav") and "error" in ours[0]
    assert "recorded at 44100 Hz" in ours[0]["error"] and "record at 16000 Hz" in ours[0]["error"]
    assert "\n" not in ours[0]["error"] and ours[1]["class"] in AUDIO_CLASSES
    text = bare_run(work["python"], str(work["root"] / "bundles" / "acoustic_cnn" / "predict.py"),
                    str(work["root"] / "cd.wav"))
    assert text.returncode == 1 and len(text.stderr.strip().splitlines()) == 1 and "16000 Hz" in text.stderr


def test_a_rate_no_wav_header_can_state_is_taken_at_its_nearest_whole_number(tmp_path):
    # 50000/3 Hz is written 16667 in a header: taken as it is; 16666 Hz is another rate, refused in one line.
    for rate in (16_667, 16_666):
        sf.write(tmp_path / f"{rate}.wav", np.full(1000, 0.25), rate, subtype="PCM_16")
    assert bundle_program.read_sound(tmp_path / "16667.wav", 50_000 / 3) == pytest.approx(np.full(1000, 0.25))
    with pytest.raises(bundle_program.InputError, match="recorded at 16666 Hz.*record at 16667 Hz .*or give the "
                                                          "samples at that rate as .dat text"):
        bundle_program.read_sound(tmp_path / "16666.wav", 50_000 / 3)


def test_an_image_bundle_answers_as_vapm_predict(work):
    files = ["strip.jpg", "wide.png"]
    ours, proc = answers_of(work, "vision_scratch", files)
    assert proc.returncode == 0, proc.stderr
    # The same Pillow decodes, greys and resizes the same bytes, so the network gets the same input: only the
    # 6-decimal rounding of both answers can differ.
    assert_same(ours, vapm_answers(work, "vision_scratch", files), tolerance=1e-5)
    text = bare_run(work["python"], str(work["root"] / "bundles" / "vision_scratch" / "predict.py"),
                    str(work["root"] / "strip.jpg"))
    assert text.returncode == 0
    assert text.stdout.strip() == f"{work['root'] / 'strip.jpg'}: {ours[0]['class']} ({ours[0]['probability']:.1%})"


def test_a_bundle_holds_what_its_readme_says(work):
    bundle = work["root"] / "bundles" / "acoustic_cnn"
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "classes.txt", "features.npz", "model.onnx",
                                                       "predict.py", "record.json"]
    assert (bundle / "classes.txt").read_text().splitlines() == AUDIO_CLASSES
    with np.load(bundle / "features.npz") as arrays:
        assert arrays["mel_filters"].shape == (64, 1025) and arrays["mfcc_mel_filters"].shape == (128, 1025)
        assert arrays["dct"].shape == (40, 128) and arrays["window"].shape == (2048,)
        assert all(arrays[k].dtype == np.float64 for k in ("mel_filters", "mfcc_mel_filters", "dct", "window"))
    readme = (bundle / "README.md").read_text()
    assert "pip install numpy onnxruntime soundfile" in readme and "(batch, 104, 98)" in readme
    assert "0. Bearing\n1. Healthy\n2. Piston" in readme
    vision = (work["root"] / "bundles" / "vision_scratch" / "README.md").read_text()
    assert "pip install numpy onnxruntime pillow" in vision and "(batch, 32, 32)" in vision
    assert "features.npz" not in os.listdir(work["root"] / "bundles" / "vision_scratch")


def export_error(capsys, *args: str) -> str:
    assert export_cli.main(list(args)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_export_refuses_a_used_destination_and_models_that_are_not_networks(work, tmp_path, capsys):
    model = str(work["root"] / "models" / "vision_scratch")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert "is not an empty folder" in export_error(capsys, model, str(tmp_path / "used"))
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert export_cli.main([model, str(tmp_path / "empty")]) == 0 and (tmp_path / "empty" / "predict.py").is_file()
    for artefact, name in (("sklearn", "acoustic_svm"), ("anomaly", "acoustic_anomaly")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "record.json").write_text(json.dumps({"model": name, "task": "classifier", "artefact": artefact,
                                                        "classes": ["a"], "input": {"kind": "wavelet"}}))
        err = export_error(capsys, str(folder), str(tmp_path / f"{name}-bundle"))
        assert "bundles hold ONNX networks" in err and "vapm predict" in err
        assert not (tmp_path / f"{name}-bundle").exists()
    assert "not a trained vapm model folder" in export_error(capsys, str(tmp_path / "nothing"), str(tmp_path / "x"))


def write_image_features(folder: Path, record: dict) -> None:
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(3), 10)
    images = np.stack([render_defect(VISION_CLASSES[label], 32, rng) for label in labels])
    splits = np.where(np.arange(30) % 3 == 0, "test", "train")
    folder.mkdir(parents=True)
    np.savez(folder / "features.npz", images=images, labels=labels, splits=splits,
             files=np.array([f"item_{i}.jpg" for i in range(30)]), classes=np.array(VISION_CLASSES))
    (folder / "record.json").write_text(json.dumps(record))  # as featurize wrote it for the model's training


def test_int8_bundle_reports_both_accuracies_and_predicts_with_the_int8_model(work, tmp_path, capsys):
    features = tmp_path / "features" / "image"
    model, dest = str(work["root"] / "models" / "vision_scratch"), tmp_path / "int8"
    write_image_features(features, json.loads((Path(model) / "record.json").read_text())["input"])
    assert export_cli.main([model, str(dest), "--int8", "--features", str(features), "--calibration-items", "12"]) == 0
    printed = capsys.readouterr().out
    assert "int8 on 10 test items: float accuracy" in printed
    report = json.loads((dest / "int8.json").read_text())
    assert report["test_items"] == 10 and report["calibration_items"] == 12
    for key in ("float_accuracy", "int8_accuracy", "top1_agreement"):
        assert 0.0 <= report[key] <= 1.0
    assert "## int8" in (dest / "README.md").read_text() and (dest / "model.int8.onnx").is_file()
    # The agreement is the share of test items where both models' top-1 classes are the same.
    from vapm.artefacts.onnx import open_session

    with np.load(features / "features.npz") as data:
        x = data["images"][data["splits"] == "test"].astype(np.float32)
    both = [open_session(dest / name).scores(x).argmax(axis=1) for name in ("model.onnx", "model.int8.onnx")]
    assert report["top1_agreement"] == pytest.approx(float(np.mean(both[0] == both[1])))
    jpg = str(work["root"] / "strip.jpg")
    proc = bare_run(work["python"], str(dest / "predict.py"), jpg, "--int8", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["class"] in VISION_CLASSES


def test_int8_without_the_workspace_features_says_to_run_featurize_and_leaves_nothing(work, tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # a workspace with models.yaml but no data/features yet
    (tmp_path / "models.yaml").write_bytes((REPO_ROOT / "models.yaml").read_bytes())
    model = str(work["root"] / "models" / "vision_scratch")
    err = export_error(capsys, model, "bundle", "--int8")
    assert "data/features/image holds no features: run `dvc repro featurize` first" in err
    assert [p.name for p in tmp_path.iterdir()] == ["models.yaml"]  # no bundle, no half-written temporary folder


def test_int8_comparison_and_calibration_sample_by_hand():
    labels = np.array([0, 1, 2, 1])
    float_scores = np.array([[.9, .1, 0], [.2, .7, .1], [.1, .2, .7], [.6, .3, .1]])  # right, right, right, wrong
    int8_scores = np.array([[.9, .1, 0], [.6, .3, .1], [.1, .2, .7], [.6, .3, .1]])   # right, wrong, right, wrong
    report = compare_int8(labels, float_scores, int8_scores)
    assert report.as_dict() == {"test_items": 4, "float_accuracy": 0.75, "int8_accuracy": 0.5,
                                "top1_agreement": 0.75}
    assert compare_int8(np.array([]), np.zeros((0, 3)), np.zeros((0, 3))).float_accuracy is None
    splits = np.array(["train", "test"] * 10)
    rows = calibration_rows(splits, 4, seed=0)
    assert len(rows) == 4 and all(splits[rows] == "train") and list(rows) == sorted(rows)
    assert np.array_equal(rows, calibration_rows(splits, 4, seed=0))
    assert list(calibration_rows(splits, 50, seed=0)) == list(range(0, 20, 2))
