"""Calibrated answers that say when the input is unfamiliar: model folders trained by the real trainers through the
train stage's save step, then used as `vapm predict`, the monitor and the served model use them."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.serving.light_models import CLASSES, PROJECT_AUDIO, SMALL_AUDIO, clips, wav_bytes
from tests.serving.test_serving import build_acoustic_model, build_vision_model
from tests.training.test_training import make_job
from vapm.config.model_registry import load_registry
from vapm.data.features.records import WaveletRecord
from vapm.data.input_checks import fit_clip_limits
from vapm.data.synth.vision import render_defect
from vapm.models import acoustic_svm
from vapm.models.components.calibration import scaled
from vapm.serving.loading import load_model
from vapm.serving.monitor import ALERT_LOG, Monitor
from vapm.training.run import save_outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO_ROOT / "docs" / "alert.schema.json").read_text())
PER_CLASS = 24


def build_svm(folder: Path) -> np.ndarray:
    """models/acoustic_svm trained by its trainer on synthetic wavelet features; returns unseen familiar clips."""
    record = WaveletRecord(audio=SMALL_AUDIO, wavelet="db4", level=3, mode="symmetric", energy="log", remove_dc=True)
    x_clips, labels = clips(SMALL_AUDIO, PER_CLASS, seed=0)
    splits = np.where(np.arange(len(labels)) % 4 == 0, "test", "train")
    record = record.model_copy(update={"checks": fit_clip_limits(x_clips[splits == "train"])})
    x = np.stack([record.from_clip(clip) for clip in x_clips])
    params = acoustic_svm.Params(C_grid=[0.1, 1.0], cv_folds=3, max_iter=5000)
    job = make_job(x, labels, splits, params)
    job = job.__class__(**{**job.__dict__, "class_names": CLASSES, "features": job.features.__class__(
        **{**job.features.__dict__, "record": record.to_dict(), "columns": tuple(record.feature_names)})})
    save_outputs(folder, load_registry(REPO_ROOT / "models.yaml")["acoustic_svm"], job, acoustic_svm.train(job))
    return clips(SMALL_AUDIO, 4, seed=1)[0]  # clips the model never saw, made as its training clips were


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("unfamiliar")
    unseen = build_svm(root / "acoustic_svm")
    build_acoustic_model(root / "acoustic_cnn")
    build_vision_model(root / "vision_scratch")
    rng = np.random.default_rng(3)
    files = {"silence.wav": wav_bytes(np.zeros(SMALL_AUDIO.clip_samples), SMALL_AUDIO),
             "noise.wav": wav_bytes(0.3 * rng.standard_normal(SMALL_AUDIO.clip_samples), SMALL_AUDIO),
             **{f"familiar_{i}.wav": wav_bytes(clip, SMALL_AUDIO) for i, clip in enumerate(unseen)},
             "compressor.wav": wav_bytes(clips(PROJECT_AUDIO, 1, seed=4)[0][1], PROJECT_AUDIO)}
    for name, image in (("blank.png", np.full((64, 64), 140, np.uint8)),
                        ("strip.png", render_defect("Patches", 200, np.random.default_rng(7)))):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        files[name] = buffer.getvalue()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_the_model_folder_carries_the_flag_and_the_temperature(trained):
    svm = json.loads((trained / "acoustic_svm" / "record.json").read_text())
    flag = svm["unfamiliar"]
    assert flag["method"] == "knn" and flag["k"] == 5 and flag["features"] == 14 and flag["false_flag_rate"] == 0.01
    assert flag["scale"] == "raw"  # no job settings: ood.standardise names no model
    assert flag["held_out"] == 3 * PER_CLASS * 3 // 4 and flag["threshold"] > 0  # every training item, out of fold
    assert flag["validation_flagged"] is None and 0 <= flag["test_flagged"] <= 1  # the SVM has no validation split
    assert (trained / "acoustic_svm" / "unfamiliar.npz").is_file() and "calibration" not in svm  # decision scores
    predictions = pd.read_parquet(trained / "acoustic_svm" / "predictions.parquet")
    assert predictions["unfamiliar"].dtype == bool and (predictions["unfamiliar_score"] > 0).all()
    cnn = json.loads((trained / "acoustic_cnn" / "record.json").read_text())
    calibration = json.loads((trained / "acoustic_cnn" / "calibration.json").read_text())
    assert cnn["calibration"]["temperature"] == calibration["temperature"] > 0
    assert 0 <= cnn["unfamiliar"]["validation_flagged"] <= 1  # its validation items, scored out of fold
    assert set(calibration["test"]) >= {"ece_before", "ece_after", "log_loss_before", "bins_before", "bins_after"}
    # A clip's answer passes one learnt rule (the distance): it flags the whole 1 %. An image's passes three (the
    # polarity and likeness checks, then the distance): each flags a third, so that together they flag 1 %.
    assert cnn["unfamiliar"]["false_flag_rate"] == 0.01
    vision = json.loads((trained / "vision_scratch" / "record.json").read_text())
    assert vision["unfamiliar"]["false_flag_rate"] == pytest.approx(0.01 / 3, rel=1e-12)


def test_the_flag_fires_on_silence_and_noise_and_not_on_familiar_clips(trained):
    model = load_model(trained / "acoustic_svm")
    names = ["silence.wav", "noise.wav", *sorted(p.name for p in trained.glob("familiar_*.wav"))]
    answers = {a["file"]: a for a in model.predict_files([(n, (trained / n).read_bytes()) for n in names])}
    silence = answers["silence.wav"]
    assert silence["unfamiliar"] and silence["unfamiliar_reasons"][0].startswith("silence")
    noise = answers["noise.wav"]
    assert noise["unfamiliar"] and noise["unfamiliar_score"] > noise["unfamiliar_threshold"]
    familiar = [answers[n] for n in names[2:]]
    # The threshold is the largest of the 54 training clips' out-of-fold scores (1 % of 54 rounds up to it). For 12
    # new clips exchangeable with them, P(k or more score above it) = C(12, k) / C(66, k): 18 % for one, 3.1 % for
    # two, 0.48 % for three; so at most two (measured: two for k-NN, one for Mahalanobis, the same two outliers).
    assert len(familiar) == 12 and sum(a["unfamiliar"] for a in familiar) <= 2, \
        [a["unfamiliar_reasons"] for a in familiar]
    assert all(a["unfamiliar_score"] >= 0 and a["unfamiliar_reasons"] == [] for a in familiar if not a["unfamiliar"])


def test_a_blank_image_is_unfamiliar_and_a_strip_is_answered(trained):
    model = load_model(trained / "vision_scratch")
    blank, strip = model.predict_files([(n, (trained / n).read_bytes()) for n in ("blank.png", "strip.png")])
    assert blank["unfamiliar"] and "blank image" in blank["unfamiliar_reasons"][0]
    assert "unfamiliar_score" in strip and isinstance(strip["unfamiliar"], bool)


def test_probabilities_are_calibrated_and_both_runtimes_flag_alike(trained):
    light, native = load_model(trained / "acoustic_cnn"), load_model(trained / "acoustic_cnn", runtime="native")
    assert light.temperature == native.temperature != 1.0
    clip = trained / "compressor.wav"
    x = light.prepare(clip.name, clip.read_bytes())[None]
    answer_light, = light.predict_files([(clip.name, clip.read_bytes())])
    answer_native, = native.predict_files([(clip.name, clip.read_bytes())])
    raw = light.scores(x)
    expected = scaled(raw, light.temperature)[0]
    assert [answer_light["probabilities"][c] for c in light.classes] == pytest.approx(expected, abs=1e-6)
    assert answer_light["class"] == answer_native["class"] and answer_light["unfamiliar"] == answer_native["unfamiliar"]
    # ONNX and Keras features differ by float32 rounding only (vapm.artefacts.onnx.FEATURE_TOLERANCE)
    assert answer_light["unfamiliar_score"] == pytest.approx(answer_native["unfamiliar_score"], rel=1e-3)


def test_predict_prints_and_returns_the_flag(trained):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src"), "HOME": str(trained)}
    command = [sys.executable, "-m", "vapm", "predict", str(trained / "acoustic_svm"), str(trained / "silence.wav"),
               str(trained / "familiar_1.wav")]
    text = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert text.returncode == 0, text.stderr
    silence, familiar = text.stdout.splitlines()
    assert "silence.wav: unfamiliar input (silence (RMS 0 < " in silence and silence.endswith("is not to be trusted")
    assert "unfamiliar input" not in familiar and familiar.endswith("not probabilities)")
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300, env=env)
    answers = json.loads(as_json.stdout)
    assert answers[0]["unfamiliar"] is True and answers[1]["unfamiliar"] is False
    assert {"unfamiliar_score", "unfamiliar_threshold", "unfamiliar_reasons"} <= set(answers[0])


def test_the_monitor_alerts_on_an_unfamiliar_file(trained, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for name in ("silence.wav", "familiar_2.wav"):
        (incoming / name).write_bytes((trained / name).read_bytes())
    out = io.StringIO()
    monitor = Monitor(incoming, [load_model(trained / "acoustic_svm")], normal_classes=set(CLASSES), settle=0.0,
                      out=out)
    monitor.score(sorted(incoming.iterdir()))
    lines = {line["file"]: line for line in map(json.loads, (incoming / ALERT_LOG).read_text().splitlines())}
    for line in lines.values():
        jsonschema.validate(line, SCHEMA)
    assert lines["silence.wav"]["alert"] and lines["silence.wav"]["results"][0]["unfamiliar"]
    assert not lines["familiar_2.wav"]["alert"]  # every class is normal here: only the flag could alert
    assert "unfamiliar input (silence" in out.getvalue()


def test_a_feature_group_from_an_early_layer_travels_in_the_export(trained, tmp_path):
    build_vision_model(tmp_path / "grouped", feature_layers=("conv1",))
    record = json.loads((tmp_path / "grouped" / "record.json").read_text())
    flag = record["unfamiliar"]
    assert flag["layers"] == ["penultimate", "conv1"] and flag["group_features"] == [8, 8]  # 4 filters: mean, std
    assert flag["features"] == 16 and len(flag["medians"]) == 2
    light, native = load_model(tmp_path / "grouped"), load_model(tmp_path / "grouped", runtime="native")
    assert len(light.model.session.get_outputs()) == 3  # probabilities, penultimate, conv1's statistics
    files = [(n, (trained / n).read_bytes()) for n in ("blank.png", "strip.png")]
    for a, b in zip(light.predict_files(files), native.predict_files(files), strict=True):
        assert a["unfamiliar_score"] == pytest.approx(b["unfamiliar_score"], rel=1e-3, abs=1e-4)
        assert a["unfamiliar"] == b["unfamiliar"]
