"""Decimal commas, every variant (issue 23, item 1): a `.dat` file is read as decimal-point numbers only when every
value parses as one; a single decimal-comma value anywhere, with or without exponent, refuses the file."""
from __future__ import annotations

import numpy as np
import pytest

from tests import hostile_archives as hostile
from vapm.data.ingest.dataset import IngestSettings, ingest_acoustic
from vapm.data.ingest.decode import AudioTarget
from vapm.data.ingest.errors import DecodeError
from vapm.data.ingest.limits import IngestLimits
from vapm.data.ingest.text_values import TEXT_BLOCK_BYTES, parse_text_values

POINT = "0.106556\n"
BLOCK_LINES = TEXT_BLOCK_BYTES // len(POINT)


@pytest.mark.parametrize("text, line, value", [
    ("0,106556\n" * 25_000 + "1,5E-05\n", 1, "0,106556"),                  # the campaign's German spreadsheet
    (POINT * 25_000 + "1,5E-05\n", 25_001, "1,5E-05"),                    # one value among decimal points
    ("2,514604E-02\n" * 50_000, 1, "2,514604E-02"),                       # all with exponents (was: wrong length)
    ("2,514604e+02\n" * 3, 1, "2,514604e+02"),
    ("-2,5E-02\n+1,25E3\n", 1, "-2,5E-02"),
    (POINT * 10 + "0,1\n" + POINT, 11, "0,1"),                            # a plain decimal comma after points
    (POINT * 10 + "  -0,1  \r\n" + POINT, 11, "-0,1"),                    # with blanks and CRLF
    ("1,5E-05\n" + POINT * 10, 1, "1,5E-05"),                             # at the start
    (POINT * (BLOCK_LINES + 5) + "3,25E-04\n", BLOCK_LINES + 6, "3,25E-04"),  # past the first parse block
    ("0.1,0.2,0.3\n" + "1,5E-05\n", 2, "1,5E-05"),                       # a list file cannot hide an exponent one
])
def test_any_decimal_comma_value_refuses_the_file(text, line, value):
    with pytest.raises(DecodeError, match=f"decimal comma at line {line} \\({value!r}\\)".replace("+", "\\+")):
        parse_text_values(text.encode())


@pytest.mark.parametrize("text, expected", [
    ("0.1\n1e-5\n-3E+2\n", [0.1, 1e-5, -300.0]),
    ("0.1,0.2,0.3\n0.4,0.5,0.6\n", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),   # comma-separated values
    ("1,2,3\n4,5,6\n", [1, 2, 3, 4, 5, 6]),                            # integers, several a line
    ("0.1,\n0.2,\n", [0.1, 0.2]),                                       # trailing commas
    ("1.5E-05\n2\n", [1.5e-05, 2.0]),
])
def test_decimal_point_files_parse_exactly_as_before(text, expected):
    np.testing.assert_array_equal(parse_text_values(text.encode()), np.asarray(expected, dtype=np.float64))


def test_a_50000_line_exponent_file_is_refused_for_its_commas_not_its_length(tmp_path):
    """The campaign's case: 50,000 values like 2,514604E-02 were refused as "wrong length: 100000 samples"."""
    members = dict(hostile.good_members("audio", clip_samples=1000))
    members["AirCompressor_Data/LIV/german.dat"] = ("2,514604E-02\n" * 1000).encode()
    archive = tmp_path / "a.zip"
    hostile.write_zip(archive, members)
    settings = IngestSettings(on_bad_file="skip", test_fraction=0.5, seed=0, max_uncompressed_bytes=2**30, n_jobs=1,
                              limits=IngestLimits())
    report = ingest_acoustic(archive, hostile.AUDIO_CLASSES, tmp_path / "out", settings,
                             AudioTarget(sample_rate=50000 / 3, samples=1000, length_tolerance=0.02))
    reasons = {entry["file"]: entry["reason"] for entry in report["bad"]}
    assert reasons["AirCompressor_Data/LIV/german.dat"].startswith("decimal comma at line 1")
