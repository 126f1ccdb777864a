"""Served models: the raw-file pyfunc, the registry's champion alias, and `mlflow models serve` over real HTTP."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from tests.training.test_training import make_job
from vapm.serving import pyfunc as serving
from vapm.tracking import promotion
from vapm.tracking import runs as tracking
from vapm.data.features.records import AcousticImageRecord, AudioInput, ImageRecord
from vapm.data.input_checks import fit_clip_limits, fit_image_limits
from vapm.models import acoustic_cnn, vision_scratch
from vapm.config.model_registry import load_registry
from vapm.config.seeding import set_global_seed
from vapm.data.synth.acoustic import render_clip
from vapm.data.synth.vision import render_defect
from vapm.training.run import save_outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
RATE = 50000 / 3
AUDIO_CLASSES = ["Bearing", "Healthy", "Piston"]
VISION_CLASSES = ["Crazing", "Patches", "Scratches"]
AUDIO = AudioInput(sample_rate=RATE, clip_samples=50_000, length_tolerance=0.02)
ACOUSTIC_RECORD = AcousticImageRecord(audio=AUDIO, n_mfcc=40, n_mels=64, mfcc_mel_bands=128, n_fft=2048,
                                      hop_length=512, fmax=RATE / 2, remove_dc=True)


def build_acoustic_model(folder: Path, record: AcousticImageRecord = ACOUSTIC_RECORD) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 6)
    clips = [render_clip(AUDIO_CLASSES[label], record.audio.clip_samples, record.audio.sample_rate, rng)
             for label in labels]
    images = np.stack([record.from_clip(clip) for clip in clips])
    if record.checks is None:  # as featurize does: the input-check limits of the training clips
        record = record.model_copy(update={"checks": fit_clip_limits(np.stack(clips)[np.arange(18) % 3 != 0])})
    params = acoustic_cnn.Params(filters=4, kernel_size=4, strides=2, pool_size=2, dense_units=[8], dropout=0.0)
    job = make_job(images, labels, np.where(np.arange(18) % 3 == 0, "test", "train"), params, epochs=1)
    job = job.__class__(**{**job.__dict__, "class_names": AUDIO_CLASSES,
                           "features": job.features.__class__(**{**job.features.__dict__,
                                                                 "record": record.to_dict()})})
    set_global_seed(0)
    save_outputs(folder, load_registry(REPO_ROOT / "models.yaml")["acoustic_cnn"], job, acoustic_cnn.train(job))


def build_vision_model(folder: Path, feature_layers: tuple[str, ...] = ()) -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 8)
    images = np.stack([render_defect(VISION_CLASSES[label], 32, rng) for label in labels])
    params = vision_scratch.Params(filters=[4], kernel_size=3, dense_units=8, dropout=0.0)
    job = make_job(images, labels, np.where(np.arange(24) % 4 == 0, "test", "train"), params, epochs=1)
    record = ImageRecord(image_size=32, checks=fit_image_limits(images[np.arange(24) % 4 != 0]))
    job = job.__class__(**{**job.__dict__, "class_names": VISION_CLASSES,
                           "features": job.features.__class__(**{**job.features.__dict__, "record": record.to_dict()})})
    set_global_seed(0)
    trained = vision_scratch.train(job)
    if feature_layers:  # ood.layers, as params.yaml would give them
        from dataclasses import replace
        from types import SimpleNamespace

        from vapm.config.settings import OodSettings

        job = replace(job, settings=SimpleNamespace(ood=OodSettings(layers={"vision_scratch": list(feature_layers)})))
    save_outputs(folder, load_registry(REPO_ROOT / "models.yaml")["vision_scratch"], job, trained)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Two small trained models logged and registered in a SQLite store, and raw files to send them."""
    root = tmp_path_factory.mktemp("serving")
    manifest = root / "manifest.parquet"
    manifest.write_bytes(b"the test set")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for name, build in (("acoustic_cnn", build_acoustic_model), ("vision_scratch", build_vision_model)):
            build(root / "models" / name)
            with tracking.tracked_run("serving-test", f"train@{name}", name, {}, [manifest]) as run:
                info = serving.log_raw_file_model(root / "models" / name)
            promoted = promotion.register_and_promote(info, name, 0.5, "m1", tolerance=0.0)
            assert promoted[:2] == ("1", "champion")
        clip = render_clip("Healthy", 132_300, 44_100.0, np.random.default_rng(5))
        buffer = io.BytesIO()
        sf.write(buffer, clip / np.abs(clip).max() * 0.5, 44_100, format="WAV", subtype="PCM_16")
        (root / "clip.wav").write_bytes(buffer.getvalue())
        (root / "reading.dat").write_text("\n".join(f"{v:.6f}" for v in render_clip("Bearing", 50_000, RATE,
                                                                                  np.random.default_rng(6))))
        Image.fromarray(render_defect("Patches", 200, np.random.default_rng(7))).save(root / "strip.jpg", quality=90)
        (root / "notes.jpg").write_text("not an image at all")
        yield {"root": root, "info": info, "uri": f"sqlite:///{root / 'mlflow.db'}", "run": run.info.run_id}


def test_champion_moves_on_an_improvement_and_not_on_a_drop(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    from mlflow.tracking import MlflowClient

    info = registry["info"]
    assert promotion.register_and_promote(info, "vision_scratch", 0.6, "m1", tolerance=0.0)[:2] == ("2", "champion")
    version, alias, why = promotion.register_and_promote(info, "vision_scratch", 0.55, "m1", tolerance=0.0)
    assert (version, alias) == ("3", "challenger") and "below champion version 2's 0.6000" in why
    assert promotion.register_and_promote(info, "vision_scratch", 0.58, "m1", tolerance=0.03)[1] == "champion"
    version, alias, why = promotion.register_and_promote(info, "vision_scratch", 0.99, "m2", tolerance=0.0)
    assert alias == "challenger" and "another test set" in why
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("vapm-vision_scratch", "champion").version) == "4"
    assert str(client.get_model_version_by_alias("vapm-vision_scratch", "challenger").version) == "5"


def test_the_pyfunc_takes_raw_files_and_refuses_a_bad_one_by_name(registry, monkeypatch):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    model = mlflow.pyfunc.load_model("models:/vapm-acoustic_cnn@champion")
    request = serving.encode_files([registry["root"] / "clip.wav", registry["root"] / "reading.dat"])
    answers = model.predict(pd.DataFrame(request["dataframe_records"]))
    assert [a["file"] for a in answers] == ["clip.wav", "reading.dat"]
    for answer in answers:
        assert answer["class"] in AUDIO_CLASSES and answer["version"] == "1" and answer["model"] == "acoustic_cnn"
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert isinstance(answer["unfamiliar"], bool) and answer["unfamiliar_threshold"] > 0  # the flag is served
    with pytest.raises(MlflowException, match="strip.jpg: acoustic_cnn takes recordings"):
        model.predict(pd.DataFrame(serving.encode_files([registry["root"] / "strip.jpg"])["dataframe_records"]))
    # The logged model carries the ONNX export and answers with it (ONNX Runtime, no TensorFlow).
    served = model.unwrap_python_model().model
    assert (served.folder / "model.onnx").is_file() and type(served.model).__name__ == "OnnxModel"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Server:
    """`mlflow models serve` on 127.0.0.1, started in its own process group and stopped by it."""

    def __init__(self, model_uri: str, tracking_uri: str, cwd: Path):
        self.port = _free_port()
        venv_bin = str(Path(sys.executable).parent)  # as after `source .venv/bin/activate`: uvicorn is found
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
               "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        self.process = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local",
                                         "-h", "127.0.0.1", "-p", str(self.port), "--workers", "1"],
                                        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, seconds: float = 240) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mlflow models serve exited: {self.process.stdout.read().decode()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise AssertionError("mlflow models serve did not answer /ping")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.mark.slow
def test_mlflow_models_serve_answers_real_files_over_http(registry):
    root = registry["root"]
    for model, good, expected_classes in [("acoustic_cnn", ["clip.wav", "reading.dat"], AUDIO_CLASSES),
                                          ("vision_scratch", ["strip.jpg"], VISION_CLASSES)]:
        server = Server(f"models:/vapm-{model}@champion", registry["uri"], root)
        try:
            server.wait_ready()
            status, answer = _post(server.port, serving.encode_files([root / name for name in good]))
            assert status == 200, answer
            assert [p["file"] for p in answer["predictions"]] == good
            assert all(p["class"] in expected_classes and p["version"] for p in answer["predictions"])
            bad = "strip.jpg" if model == "acoustic_cnn" else "notes.jpg"
            # MLflow's scoring server puts its own "Failed to predict data ..." before the model's reason,
            # which is the message's last line: one line, naming the file.
            status, answer = _post(server.port, serving.encode_files([root / bad]))
            reason = answer["message"].splitlines()[-1].removeprefix("Error: ")
            assert 400 <= status < 500 and reason.startswith(f"{bad}: "), answer
            status, answer = _post(server.port, {"dataframe_records": [{"file": "x.wav", "data": "%%%"}]})
            assert status == 400 and answer["message"].splitlines()[-1] == "Error: x.wav (row 0): data is not base64"
            status, _ = _post(server.port, serving.encode_files([root / good[0]]))
            assert status == 200  # still serving after the bad requests
        finally:
            server.stop()
        assert server.process.poll() is not None
