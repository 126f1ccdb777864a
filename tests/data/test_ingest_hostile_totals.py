"""Hostile input, round two: totals, bounded reports and class names that collide (issue 23, items 2, 6, 7)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from tests import hostile_archives as hostile
from vapm.config.settings import ParamsError
from vapm.data.ingest.dataset import IngestError, IngestSettings, ingest_acoustic, ingest_vision
from vapm.data.ingest.decode import AudioTarget
from vapm.data.ingest.labels import check_class_names
from vapm.data.ingest.limits import IngestLimits

REPO_ROOT = Path(__file__).resolve().parents[2]
VISION, AUDIO = hostile.VISION_CLASSES, hostile.AUDIO_CLASSES
TARGET = AudioTarget(sample_rate=50000 / 3, samples=1000, length_tolerance=0.02)


def settings(**changes) -> IngestSettings:
    values = dict(on_bad_file="skip", test_fraction=0.5, seed=0, max_uncompressed_bytes=2**30, n_jobs=1,
                  limits=IngestLimits())
    return IngestSettings(**{**values, **changes})


def png_claiming(width: int, height: int) -> bytes:
    """A grey PNG whose header says width x height (its data is empty): costs nothing to build or zip."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def big_images(count: int) -> dict[str, bytes]:
    """`count` images just within ingest.max_image_pixels (4096 x 4096), PNG, JPEG and BMP, all different."""
    members = {}
    for n in range(count):
        width, height = 4096, 4096 - n  # distinct bytes, so none is dropped as a duplicate
        kind = n % 3
        data = (png_claiming(width, height) if kind == 0 else hostile.jpeg_with_size(width, height) if kind == 1
                else hostile.bmp_with_size(width, height))
        suffix = ("png", "jpg", "bmp")[kind]
        members[f"NEU/train/{VISION[n % len(VISION)]}/big{n}.{suffix}"] = data
    return members


def test_a_hundred_images_each_within_the_pixel_limit_are_refused_by_their_total(tmp_path):
    archive = tmp_path / "many-big.zip"
    hostile.write_zip(archive, {**hostile.good_members("vision"), **big_images(100)})
    assert archive.stat().st_size < 2 * 2**20  # 1.6 GB of pixels in a small zip, as the campaign found
    with pytest.raises(IngestError, match=r"ingest\.max_total_decoded_mb") as caught:
        ingest_vision(archive, VISION, tmp_path / "out", settings())
    assert "100" in str(caught.value) or "108" in str(caught.value)  # how many images, said
    assert caught.value.report["status"] == "failed"
    # Refused before decoding: nothing written, nothing half-written.
    assert sorted(p.name for p in (tmp_path / "out").glob("*")) == []


def test_the_same_images_pass_when_the_total_allows_them_and_one_over_the_limit_never_counts(tmp_path):
    archive = tmp_path / "few.zip"
    members = {**hostile.good_members("vision"), **big_images(3),
               "NEU/train/Crazing/huge.png": png_claiming(9000, 9000)}  # over max_image_pixels: bad, not counted
    hostile.write_zip(archive, members)
    total = sum(4096 * (4096 - n) for n in range(3)) + 8 * 8 * len(hostile.good_members("vision"))
    with pytest.raises(IngestError, match="over ingest.max_total_decoded_mb"):
        ingest_vision(archive, VISION, tmp_path / "small", settings(max_total_decoded_bytes=total - 1))
    # At a limit that fits exactly the three and the good ones (not the 9000 x 9000 one) the total check passes;
    # the empty image data then makes them bad files at decoding, as before.
    report = ingest_vision(archive, VISION, tmp_path / "fits", settings(max_total_decoded_bytes=total))
    assert report["status"] == "ok" and report["kept"]["total"] >= len(hostile.good_members("vision"))
    assert any(entry["file"].endswith("huge.png") and "max_image_pixels" in entry["reason"] for entry in report["bad"])


def test_too_many_clips_are_refused_by_their_total_before_decoding(tmp_path):
    archive = tmp_path / "clips.zip"
    hostile.write_zip(archive, hostile.good_members("audio", clip_samples=1000))
    n_clips = len(hostile.good_members("audio"))
    limit = (n_clips * 1000 * 4) - 1
    with pytest.raises(IngestError, match=rf"{n_clips} clips of 1000 samples.*max_total_decoded_mb"):
        ingest_acoustic(archive, AUDIO, tmp_path / "out", settings(max_total_decoded_bytes=limit), TARGET)
    assert not list((tmp_path / "out").glob("*"))
    report = ingest_acoustic(archive, AUDIO, tmp_path / "ok", settings(max_total_decoded_bytes=limit + 1), TARGET)
    assert report["status"] == "ok"


def test_the_shipped_default_lets_the_real_datasets_through_with_room():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    neu = 1800 * 200 * 200                  # bytes of the NEU set's pixels
    compressor = 320 * 50_000 * 4           # the WAV subset's clips, float32
    assert params["ingest"]["max_total_decoded_mb"] * 2**20 > 10 * max(neu, compressor)


# ---- item 7: the git-tracked report stays small whatever the archive -----------------------------------------

def test_the_report_lists_stay_bounded_with_counts_by_reason(tmp_path):
    members = dict(hostile.good_members("vision"))
    members.update({f"NEU/docs/readme{n}.txt": b"x" for n in range(20_000)})               # ignored
    members.update({f"NEU/train/Crazing/broken{n}.png": b"not a png %d" % n for n in range(300)})  # bad
    archive = tmp_path / "noisy.zip"
    hostile.write_zip(archive, members)
    report = ingest_vision(archive, VISION, tmp_path / "out", settings(report_examples=5))
    assert report["ignored_count"] == 20_000 and len(report["ignored"]) == 5
    assert report["bad_count"] == 300 and len(report["bad"]) == 5
    assert sum(report["bad_reasons"].values()) == 300 and len(report["bad_reasons"]) <= 6
    assert sum(report["ignored_reasons"].values()) == 20_000
    assert report["ignored"] == sorted(report["ignored"], key=lambda e: (e["file"], e["reason"]))
    default = ingest_vision(archive, VISION, tmp_path / "default", settings())
    assert len(json.dumps(default)) < 20_000  # 16.5 MB before, for 100,000 members


# ---- item 6: class names that collide are one params error before any work ----------------------------------

@pytest.mark.parametrize("classes", [["Crazing", "Cr", "Patches"], ["Patches", "Pa"], ["Rolled", "rolled-in_scale"],
                                     ["Scratches", "sc", "Inclusion"]])
def test_class_names_that_share_a_spelling_are_one_params_error(classes):
    with pytest.raises(ParamsError, match=r"vision\.classes: classes .* share the spelling"):
        check_class_names(classes, "vision.classes")


def test_the_ingest_stage_refuses_them_in_one_line_before_reading(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["vision"]["classes"] = ["Crazing", "Cr", "Patches"]
    params["ingest"]["vision_archive"] = str(tmp_path / "missing.zip")  # never opened
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "ingest.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ingest:")]
    assert len(lines) == 1 and "vision.classes" in lines[0] and "'cr'" in lines[0], result.stderr
    report = json.loads((tmp_path / "metrics" / "ingest_report.json").read_text())
    assert {entry["status"] for entry in report.values()} == {"failed"}


def test_distinct_class_names_pass():
    check_class_names(list(VISION), "vision.classes")
    check_class_names(["Good", "Dent", "Scratch"], "vision.classes")
