"""The folder monitor: every file scored once when completely written, bad files skipped, restarts remembered."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.serving.test_serving import AUDIO_CLASSES, RATE, VISION_CLASSES, build_acoustic_model, build_vision_model
from vapm.serving.loading import load_model
from vapm.serving.monitor import ALERT_LOG, STOP_CHECK_FILES, Monitor
from vapm.data.synth.acoustic import render_clip
from vapm.data.synth.vision import render_defect

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO_ROOT / "docs" / "alert.schema.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor-models")
    build_acoustic_model(root / "acoustic_cnn")
    build_vision_model(root / "vision_scratch")
    return root


def wav_bytes(seed: int) -> bytes:
    clip = render_clip("Healthy", 132_300, 44_100.0, np.random.default_rng(seed))
    buffer = io.BytesIO()
    sf.write(buffer, clip / np.abs(clip).max() * 0.5, 44_100, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def jpeg_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render_defect("Patches", 200, np.random.default_rng(seed))).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def dat_bytes(seed: int) -> bytes:
    return "\n".join(f"{v:.6f}" for v in render_clip("Bearing", 50_000, RATE, np.random.default_rng(seed))).encode()


def read_log(folder: Path) -> list[dict]:
    path = folder / ALERT_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for_lines(folder: Path, count: int, seconds: float = 120) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = read_log(folder)
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"expected {count} alert lines, got {read_log(folder)}")


def start(monitor: Monitor, poll: bool = False) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, kwargs={"stop": stop, "poll": poll}, daemon=True)
    thread.start()
    return thread, stop


def test_a_stop_during_a_burst_ends_the_watch_after_one_group_and_the_rest_waits_for_the_next_start(models,
                                                                                                      tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for index in range(STOP_CHECK_FILES + 5):
        (incoming / f"strip{index:02d}.jpg").write_bytes(jpeg_bytes(index))
    loaded = [load_model(models / "vision_scratch")]
    stop = threading.Event()
    watching = []

    class StoppedAfterOneGroup(Monitor):  # the stop arrives while the first group of the burst is scored
        def score(self, paths):
            lines = super().score(paths)
            stop.set()
            return lines

    monitor = StoppedAfterOneGroup(incoming, loaded, normal_classes=set(VISION_CLASSES), settle=0.0,
                                   out=io.StringIO())
    monitor.run(stop=stop, watching=lambda: watching.append(True))
    assert watching == [True]  # announced once, when the folder was watched
    assert len(read_log(incoming)) == STOP_CHECK_FILES
    assert len(monitor.pending()) == 5
    restarted = Monitor(incoming, loaded, normal_classes=set(VISION_CLASSES), settle=0.0, out=io.StringIO())
    restarted.score(restarted.pending())
    assert sorted(line["file"] for line in read_log(incoming)) == sorted(p.name for p in incoming.glob("*.jpg"))


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_files_dropped_in_are_scored_once_each_and_survive_a_restart(models, tmp_path, poll):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    loaded = [load_model(models / "acoustic_cnn"), load_model(models / "vision_scratch")]
    # inotify waits for the writer to close the file; polling only sees it stop changing, so its settle time
    # must outlast the slow writer's pauses (0.5 s)
    monitor = Monitor(incoming, loaded, normal_classes={"Healthy"}, settle=1.5 if poll else 0.3, out=io.StringIO())
    thread, stop = start(monitor, poll)
    try:
        (incoming / "strip.jpg").write_bytes(jpeg_bytes(1))
        (incoming / "clip.wav").write_bytes(wav_bytes(2))
        (incoming / "reading.dat").write_bytes(dat_bytes(3))
        (incoming / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt this is not a recording")
        (incoming / "notes.txt").write_text("not for any model")
        slow = dat_bytes(4)
        with (incoming / "slow.dat").open("wb") as writer:  # written in pieces, with pauses longer than settle
            for start_at in range(0, len(slow), len(slow) // 4 + 1):
                writer.write(slow[start_at:start_at + len(slow) // 4 + 1])
                writer.flush()
                time.sleep(0.5)
        lines = wait_for_lines(incoming, 5)
        time.sleep(1.0)  # nothing more may come: each file once
        lines = read_log(incoming)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sorted(line["file"] for line in lines) == ["clip.wav", "corrupt.wav", "reading.dat", "slow.dat", "strip.jpg"]
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    by_file = {line["file"]: line for line in lines}
    assert by_file["corrupt.wav"]["error"].startswith("corrupt.wav: ") and by_file["corrupt.wav"]["results"] == []
    assert by_file["slow.dat"]["error"] is None and by_file["slow.dat"]["size"] == len(slow)  # the whole file
    assert by_file["strip.jpg"]["results"][0]["class"] in VISION_CLASSES
    for name in ("clip.wav", "reading.dat", "slow.dat"):
        answer = by_file[name]["results"][0]
        assert answer["model"] == "acoustic_cnn" and answer["class"] in AUDIO_CLASSES
        # an alert: a class not listed as normal, or an unfamiliar input (the tiny model flags many)
        assert by_file[name]["alert"] == (answer["class"] != "Healthy" or answer["unfamiliar"])

    restarted = Monitor(incoming, loaded, normal_classes={"Healthy"}, settle=0.3, out=io.StringIO())
    assert restarted.pending() == []  # the state file remembers what was scored
    thread, stop = start(restarted)
    try:
        (incoming / "later.jpg").write_bytes(jpeg_bytes(5))
        lines = wait_for_lines(incoming, 6)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [line["file"] for line in read_log(incoming)].count("later.jpg") == 1 and len(read_log(incoming)) == 6


def test_monitor_command_scores_what_is_there_once(models, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "a.wav").write_bytes(wav_bytes(7))
    (incoming / "b.jpg").write_bytes(jpeg_bytes(8))
    command = [sys.executable, "-m", "vapm", "monitor", str(incoming), "--model", str(models / "acoustic_cnn"),
               "--once"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "HOME": str(tmp_path)}
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert [line["file"] for line in read_log(incoming)] == ["a.wav"]  # the image is for no model given
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and len(read_log(incoming)) == 1
    missing = subprocess.run([sys.executable, "-m", "vapm", "monitor", str(tmp_path / "nowhere"), "--model",
                              str(models / "acoustic_cnn")], capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 1 and "is not a folder" in missing.stderr and "Traceback" not in missing.stderr


def test_monitor_benchmark_measures_latency_and_bursts(models, tmp_path):
    import zipfile

    from vapm.serving.warm_models import load_models
    from vapm.bench.monitor import run_benchmark

    archive = tmp_path / "line.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"line/strip_{i}.jpg", jpeg_bytes(10 + i))
            zf.writestr(f"line/clip_{i}.wav", wav_bytes(20 + i))
    results = run_benchmark(load_models([str(models / "vision_scratch"), str(models / "acoustic_cnn")]), [archive],
                            files=3, burst=4, settle=0.2)
    for kind in ("images", "clips"):
        measured = results[kind]
        assert measured["errors"] == [] and measured["burst_files"] == 4 and measured["files_per_second"] > 0
        # a file is scored only after it stayed unchanged for the settle time
        assert measured["latency_median_s"] >= 0.2 and measured["latency_p95_s"] >= measured["latency_median_s"]
