"""Per-member limits, formats by content and name, strict numbers, duplicate names and linear time.

Each test here pins one finding of issue 14 on a small input; tests/data/test_ingest_fuzz.py runs the same and
many more through the stage with its memory measured.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import hostile_archives as hostile
from vapm.data.ingest.dataset import IngestSettings, ingest_acoustic, ingest_vision
from vapm.data.ingest.decode import AudioTarget, decode_audio, decode_image
from vapm.data.ingest.errors import DecodeError
from vapm.data.ingest.limits import PILLOW_MAX_IMAGE_PIXELS, IngestLimits
from vapm.data.ingest.text_values import parse_text_values
from vapm.config.settings import ParamsError

REPO_ROOT = Path(__file__).resolve().parents[2]

TARGET = AudioTarget(sample_rate=50000 / 3, samples=1000, length_tolerance=0.02)
VISION, AUDIO = hostile.VISION_CLASSES, hostile.AUDIO_CLASSES
SMALL = IngestLimits(max_member_bytes=2**20, max_image_pixels=10_000, max_source_samples=5_000)


def settings(limits: IngestLimits = SMALL, **changes) -> IngestSettings:
    values = dict(on_bad_file="skip", test_fraction=0.5, seed=0, max_uncompressed_bytes=2**30, n_jobs=1,
                  limits=limits)
    return IngestSettings(**{**values, **changes})


def bad_reasons(report: dict) -> dict[str, str]:
    return {entry["file"]: entry["reason"] for entry in report["bad"]}


# ---- finding 1: member size, from the header and while streaming ----

def test_a_member_over_the_size_limit_is_refused_from_its_header(tmp_path):
    archive = tmp_path / "bomb.zip"
    hostile.write_zip(archive, {**hostile.good_members("acoustic"), "AirCompressor_Data/Healthy/bomb.dat":
                                bytes(2**20 + 1)})
    assert zipfile.ZipFile(archive).getinfo("AirCompressor_Data/Healthy/bomb.dat").compress_size < 2**20 / 500

    report = ingest_acoustic(archive, AUDIO, tmp_path / "out", settings(), TARGET)

    assert bad_reasons(report) == {"AirCompressor_Data/Healthy/bomb.dat":
                                   "unpacks to 1.0 MiB, more than the limit of 1.0 MiB (ingest.max_member_mb)"}


@pytest.mark.parametrize("declared, reason", [
    (1024, "cannot read from archive: Bad CRC-32 for file 'AirCompressor_Data/Healthy/liar.dat'"),
    (500_000, "its header declares 500000 bytes but it holds 21000"),
])
def test_a_header_that_lies_about_the_size_is_caught_while_streaming(tmp_path, declared, reason):
    members = {**hostile.good_members("acoustic"), "AirCompressor_Data/Healthy/liar.dat": b"0.001\n" * 3500}
    archive = tmp_path / "liar.zip"
    hostile.lying_size_builder(members, "AirCompressor_Data/Healthy/liar.dat", declared)(archive)

    report = ingest_acoustic(archive, AUDIO, tmp_path / "out", settings(), TARGET)

    assert bad_reasons(report) == {"AirCompressor_Data/Healthy/liar.dat": reason}


def test_members_compressed_beyond_what_zipfile_can_bound_are_refused(tmp_path):
    archive = tmp_path / "bz.zip"
    hostile.compression_builder(hostile.good_members("acoustic"), "AirCompressor_Data/Healthy/bz.dat",
                                bytes(2**19), zipfile.ZIP_BZIP2)(archive)
    assert zipfile.ZipFile(archive).getinfo("AirCompressor_Data/Healthy/bz.dat").compress_size < 1000

    report = ingest_acoustic(archive, AUDIO, tmp_path / "out", settings(), TARGET)

    assert "compressed with bzip2" in bad_reasons(report)["AirCompressor_Data/Healthy/bz.dat"]


def test_dat_values_are_counted_against_the_sample_limit_while_parsing():
    with pytest.raises(DecodeError, match=r"more than 5000 values \(ingest\.max_source_samples\)"):
        parse_text_values(b"0\n" * 600_000, max_values=5000)
    assert len(parse_text_values(b"0\n" * 5000, max_values=5000)) == 5000


def test_wav_frames_are_checked_from_the_header_before_reading(ingest_encode_sound):
    wav = ingest_encode_sound(np.zeros(5001), 16667)
    with pytest.raises(DecodeError, match=r"audio has 5001 samples per channel, more than "
                                          r"ingest\.max_source_samples \(5000\)"):
        decode_audio("a/x.wav", wav, TARGET, max_source_samples=5000)


# ---- finding 2: decoded image size, and formats by content and name ----

def test_an_image_over_the_pixel_limit_is_refused_before_decoding(ingest_encode_image):
    png = ingest_encode_image(np.zeros((9000, 9000), np.uint8))
    assert len(png) < 100_000
    with pytest.raises(DecodeError, match=r"image is 9000x9000 = 81000000 pixels, more than "
                                          r"ingest\.max_image_pixels \(16777216\)"):
        decode_image(png, "a/huge.png")
    with pytest.raises(DecodeError, match=r"image has 4294836225 pixels, more than ingest\.max_image_pixels"):
        decode_image(hostile.png_header_only(65535, 65535), "a/claims.png")


def with_text_chunk(png: bytes, text: bytes) -> bytes:
    """The same image with a tEXt chunk before IEND: other bytes, same pixels."""
    body = b"tEXt" + b"note\x00" + text
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]


def test_twenty_9000_pixel_square_pngs_are_refused_not_written(tmp_path, ingest_encode_image):
    # As in the issue: 20 PNGs of 9000 x 9000 in a 2 MB zip went silently into a 1.6 GB pixels.npy.
    huge = ingest_encode_image(np.zeros((9000, 9000), np.uint8))
    members = {**hostile.good_members("vision"),
               **{f"NEU/train/Crazing/huge{n}.png": with_text_chunk(huge, str(n).encode()) for n in range(20)}}
    archive = tmp_path / "huge.zip"
    hostile.write_zip(archive, members)
    assert archive.stat().st_size < 2 * 2**20

    report = ingest_vision(archive, VISION, tmp_path / "out", settings(IngestLimits()))

    assert set(bad_reasons(report)) == {f"NEU/train/Crazing/huge{n}.png" for n in range(20)}
    assert set(bad_reasons(report).values()) == {
        "image is 9000x9000 = 81000000 pixels, more than ingest.max_image_pixels (16777216)"}
    assert np.load(tmp_path / "out" / "pixels.npy").size == 8 * 8 * 8  # the eight good 8 x 8 images only


@pytest.mark.parametrize("name, data, reason", [
    ("x.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
     "content is PostScript (EPS), not JPEG, PNG or BMP"),
    ("x.jpg", hostile.png(1), "content is PNG, but the name ends in .jpg (JPEG expected)"),
    ("x.png", hostile.jpeg(2), "content is JPEG, but the name ends in .png (PNG expected)"),
    ("x.png", hostile.image_bytes(np.zeros((4, 4), np.uint8), "GIF"), "content is GIF, not JPEG, PNG or BMP"),
    ("x.bmp", hostile.image_bytes(np.zeros((4, 4), np.uint8), "TIFF"), "content is TIFF, not JPEG, PNG or BMP"),
])
def test_images_are_decoded_only_when_content_and_name_agree_on_jpeg_png_or_bmp(name, data, reason):
    with pytest.raises(DecodeError) as caught:
        decode_image(data, name)
    assert reason in str(caught.value)


@pytest.mark.parametrize("name, data, reason", [
    ("x.wav", hostile.png(3), "content is PNG, but the name ends in .wav (WAV expected)"),
    ("x.flac", hostile.wav(4), "content is WAV, but the name ends in .flac (FLAC expected)"),
    ("x.wav", hostile.flac(5), "content is FLAC, but the name ends in .wav (WAV expected)"),
    ("x.wav", hostile.sound(np.zeros(1000), 16667, "AIFF"), "content is AIFF (Apple/SGI), not WAV or FLAC"),
    ("x.dat", hostile.png(6), "content is PNG, but the name ends in .dat (text expected)"),
])
def test_clips_are_decoded_only_when_content_and_name_agree_on_wav_flac_or_text(name, data, reason):
    with pytest.raises(DecodeError) as caught:
        decode_audio(name, data, TARGET)
    assert reason in str(caught.value)


# ---- finding 3: values beyond float32 ----

@pytest.mark.parametrize("text, reason", [
    (b"1e39\n" + b"0.1\n" * 999, "value '1e39' at line 1 is beyond the float32 range"),
    (b"0.1\n-3.5e38\n" + b"0.1\n" * 998, "value '-3.5e38' at line 2 is beyond the float32 range"),
    (b"0.1\n1e400\n" + b"0.1\n" * 998, "value '1e400' at line 2 is beyond the float32 range"),
])
def test_dat_values_beyond_float32_are_refused_with_their_line(text, reason):
    with pytest.raises(DecodeError) as caught:
        decode_audio("a/x.dat", text, TARGET)
    assert str(caught.value).startswith(reason)


def test_float64_wav_beyond_float32_is_refused(ingest_encode_sound):
    wav = hostile.sound(np.full(1000, 1e39), 16667, "WAV", "DOUBLE")
    with pytest.raises(DecodeError, match="audio holds values beyond the float32 range"):
        decode_audio("a/x.wav", wav, TARGET)


def test_the_largest_float32_values_are_kept_exactly():
    largest = float(np.finfo(np.float32).max)
    values = parse_text_values(f"{largest!r}\n{-largest!r}\n".encode())
    assert values.astype(np.float32).tolist() == [largest, -largest]


# ---- finding 4: decimal commas and malformed numbers ----

@pytest.mark.parametrize("lines", [50_000, 25_000, 1000])
def test_decimal_commas_are_named_whatever_the_count(lines):
    text = b"0,106556\n-1,25\n" * (lines // 2)
    target = AudioTarget(sample_rate=50000 / 3, samples=50_000, length_tolerance=0.02)
    with pytest.raises(DecodeError, match=r"^decimal comma at line 1 \('0,106556'\): write numbers with a decimal "
                                          r"point \('0\.106556'\)$"):
        decode_audio("a/x.dat", text, target)


def test_comma_separated_values_with_decimal_points_are_still_accepted():
    np.testing.assert_array_equal(parse_text_values(b"0.5,1.5\n2.5,3.5,\n"), [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(parse_text_values(b"1,2,3\n4,5,6\n"), [1, 2, 3, 4, 5, 6])  # several a line


@pytest.mark.parametrize("text, reason", [
    (b"0.1\n1.2.3\n", "malformed number '1.2.3' at line 2"),
    (b"--1\n", "malformed number '--1' at line 1"),
    (b"0.1\n1e\n", "malformed number '1e' at line 2"),
    (b"1_000\n", "non-numeric value '1_000' at line 1"),
    (b"0x10\n", "non-numeric value '0x10' at line 1"),
    (b"0.1 0.2\n", "values separated by spaces at line 1 ('0.1 0.2')"),
    (b"\n\n\n0.1\nabc\n", "non-numeric value 'abc' at line 5"),  # leading blank lines still count
])
def test_malformed_numbers_are_refused_with_their_line(text, reason):
    with pytest.raises(DecodeError) as caught:
        parse_text_values(text)
    assert str(caught.value).startswith(reason)


def test_text_is_parsed_the_same_whatever_the_block_boundaries(monkeypatch):
    import vapm.data.ingest.text_values as text_values

    values = np.random.default_rng(0).normal(size=3000)
    text = b"\xef\xbb\xbf\n" + b"".join(f"{float(value)!r},\r\n".encode() for value in values[:1500]) + ",".join(
        repr(float(value)) for value in values[1500:]).encode() + b"\n\n"
    whole = parse_text_values(text)
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", 97)  # blocks cut inside lines and between commas
    np.testing.assert_array_equal(parse_text_values(text), whole)
    np.testing.assert_array_equal(whole, values)
    with pytest.raises(DecodeError, match="non-numeric value 'x' at line 1502"):
        parse_text_values(text.replace(repr(float(values[2000])).encode(), b"x"))


# ---- finding 7: duplicate names, and time linear in the number of members ----

def test_two_members_with_the_same_name_are_refused_not_read_as_one(tmp_path):
    archive = tmp_path / "twins.zip"
    twin = "NEU/train/Crazing/twin.png"
    hostile.write_zip(archive, [*hostile.good_members("vision").items(), (twin, hostile.png(1)),
                                (twin, hostile.png(2))])

    report = ingest_vision(archive, VISION, tmp_path / "out", settings())

    assert report["bad"] == [{"file": twin, "reason": "2 members of the archive have this name; none is read "
                                                      "(re-create the archive with unique names)"}]
    assert report["duplicates"] == []
    assert twin not in pd.read_parquet(tmp_path / "out" / "manifest.parquet").file.tolist()


def count_zip_work(monkeypatch) -> dict[str, int]:
    """Counts, by wrapping zipfile's own methods, how often the directory is parsed and members opened."""
    counts = {"directory_parses": 0, "member_opens": 0}
    real_parse, real_open = zipfile.ZipFile._RealGetContents, zipfile.ZipFile.open

    def parse(self):
        counts["directory_parses"] += 1
        return real_parse(self)

    def open_member(self, name, *args, **kwargs):
        counts["member_opens"] += 1
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", parse)
    monkeypatch.setattr(zipfile.ZipFile, "open", open_member)
    return counts


@pytest.mark.parametrize("n_members", [400, 1600])
def test_each_member_is_opened_twice_and_the_directory_parsed_once(tmp_path, monkeypatch, n_members):
    # Reopening the zip for every chunk of 32 members parsed its directory N/32 times: quadratic time.
    members = {f"{split}/{VISION[n % 2]}/{n}.png": hostile.png(n, (2, 2))
               for n in range(n_members) for split in ["train" if n % 4 < 2 else "test"]}
    archive = tmp_path / "many.zip"
    hostile.write_zip(archive, members)
    counts = count_zip_work(monkeypatch)

    report = ingest_vision(archive, VISION, tmp_path / "out", settings())

    assert report["kept"]["total"] + len(report["duplicates"]) == n_members
    assert counts == {"directory_parses": 1, "member_opens": n_members + report["kept"]["total"]}


# ---- the limits' own params ----

def test_limits_come_from_the_validated_params(monkeypatch):
    from vapm.data.ingest.dataset import ingest_settings
    from vapm.config.settings import load_settings

    monkeypatch.chdir(REPO_ROOT)
    limits = ingest_settings(load_settings(models=())).limits
    assert limits == IngestLimits(64 * 2**20, 4096 * 4096, 4_194_304)


@pytest.mark.parametrize("key, value, message", [
    ("max_member_mb", "big", "ingest.max_member_mb: input should be a valid number"),
    ("max_member_mb", 0, "ingest.max_member_mb: input should be greater than 0"),
    ("max_member_mb", None, "ingest.max_member_mb: input should be a valid number"),
    ("max_image_pixels", 1.5, "ingest.max_image_pixels: input should be a valid integer"),
    ("max_image_pixels", -1, "ingest.max_image_pixels: input should be greater than or equal to 1"),
    ("max_image_pixels", PILLOW_MAX_IMAGE_PIXELS + 1, "ingest.max_image_pixels: input should be less than or equal"),
    ("max_image_pixels", True, "ingest.max_image_pixels: input should be a valid integer"),
    ("max_source_samples", "many", "ingest.max_source_samples: input should be a valid integer"),
    ("max_source_samples", 0, "ingest.max_source_samples: input should be greater than or equal to 1"),
])
def test_bad_limit_params_name_their_key(key, value, message):
    from vapm.config.model_registry import load_registry
    from vapm.config.settings import parse_settings, read_params

    params = read_params(REPO_ROOT / "params.yaml")
    params["ingest"][key] = value
    with pytest.raises(ParamsError) as caught:
        parse_settings(params, {name: None for name in load_registry(REPO_ROOT / "models.yaml")})
    assert message in str(caught.value)


def test_limits_check_themselves_when_built_directly():
    with pytest.raises(ParamsError, match="ingest.max_source_samples must be a whole number at least 1, got 0"):
        IngestLimits(max_source_samples=0)


def test_worker_processes_give_the_same_report_on_hostile_members(tmp_path, monkeypatch):
    import vapm.data.ingest.dataset as dataset

    members = {**hostile.good_members("acoustic"), "AirCompressor_Data/LIV/huge.wav": hostile.png(1),
               "AirCompressor_Data/LIV/1e39.dat": b"1e39\n" * 1000, "AirCompressor_Data/LIV/x\x1b.dat": b"0,5\n" * 1000}
    archive = tmp_path / "mixed.zip"
    hostile.write_zip(archive, [*members.items(), ("AirCompressor_Data/LIV/twin.dat", hostile.dat(1)),
                                ("AirCompressor_Data/LIV/twin.dat", hostile.dat(2))])
    serial = ingest_acoustic(archive, AUDIO, tmp_path / "serial", settings(), TARGET)
    monkeypatch.setattr(dataset, "PARALLEL_MIN_BYTES", 0)  # so this small archive is worth two workers

    parallel = ingest_acoustic(archive, AUDIO, tmp_path / "parallel", settings(n_jobs=2), TARGET)

    assert parallel == serial
    assert len(serial["bad"]) == 4
    for name in ("clips.npy", "manifest.parquet"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()
