"""Refusing unsafe, missing and oversized archives, without writing anything."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from vapm.data.ingest.archive import ArchiveError
from vapm.data.ingest.dataset import IngestError, IngestSettings, ingest_vision
from vapm.data.ingest.archive import safe_members

CLASSES = ["Crazing", "Inclusion"]


def settings(max_mb: float = 64) -> IngestSettings:
    return IngestSettings(on_bad_file="fail", test_fraction=0.5, seed=0, max_uncompressed_bytes=int(max_mb * 2**20),
                          n_jobs=1)


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*")}


@pytest.fixture
def good_png(ingest_encode_image) -> bytes:
    return ingest_encode_image(np.full((4, 4), 7, dtype=np.uint8))


@pytest.mark.parametrize("evil_member, reason", [
    ("../evil.txt", "'..' in path"),
    ("train/Crazing/../../../evil.jpg", "'..' in path"),
    ("/etc/x", "absolute path"),
    ("C:/Windows/evil.jpg", "drive letter"),
    ("..\\evil.jpg", "'..' in path"),
])
def test_unsafe_paths_are_refused_naming_the_member_and_nothing_is_written(
        tmp_path, ingest_make_zip, good_png, evil_member, reason):
    archive = ingest_make_zip("evil.zip", {"train/Crazing/a.png": good_png, evil_member: b"owned"})
    before = files_under(tmp_path)
    archive_digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out_dir = tmp_path / "out" / "vision"

    with pytest.raises(IngestError) as caught:
        ingest_vision(archive, CLASSES, out_dir, settings())

    assert evil_member in str(caught.value) or repr(evil_member) in str(caught.value)
    assert reason in str(caught.value)
    assert caught.value.report["status"] == "failed"
    assert files_under(tmp_path) == before  # no extracted file, not even an output folder
    assert not (tmp_path.parent / "evil.txt").exists()
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == archive_digest


def test_symlink_member_is_refused(tmp_path, ingest_make_zip, good_png):
    archive = ingest_make_zip("link.zip", {"train/Crazing/a.png": good_png},
                              symlinks={"train/Crazing/b.png": "/etc/passwd"})
    before = files_under(tmp_path)
    with pytest.raises(ArchiveError, match=r"'train/Crazing/b.png'.*symbolic link"):
        safe_members(archive, 2**20)
    with pytest.raises(IngestError, match="symbolic link"):
        ingest_vision(archive, CLASSES, tmp_path / "out", settings())
    assert files_under(tmp_path) == before


def test_archive_larger_than_the_limit_is_refused(tmp_path, ingest_make_zip):
    # Zeros compress ~1000:1, like a zip bomb: the declared unpacked size is what counts.
    archive = ingest_make_zip("bomb.zip", {"train/Crazing/big.png": bytes(3 * 2**20)})
    assert archive.stat().st_size < 2**20 / 10
    with pytest.raises(IngestError, match=r"unpacks to 3\.0 MiB.*limit of 2\.0 MiB.*max_uncompressed_mb"):
        ingest_vision(archive, CLASSES, tmp_path / "out", settings(max_mb=2))
    assert not (tmp_path / "out").exists()


def test_missing_archive_gives_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="archive not found: .*nowhere.zip"):
        ingest_vision(tmp_path / "nowhere.zip", CLASSES, tmp_path / "out", settings())


def test_non_zip_file_gives_a_clear_error(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_text("this is not a zip archive")
    with pytest.raises(IngestError, match="not a readable zip archive"):
        ingest_vision(fake, CLASSES, tmp_path / "out", settings())


def test_safe_archive_lists_all_members(ingest_make_zip, good_png):
    archive = ingest_make_zip("ok.zip", {"a/Crazing/x.png": good_png, "a/readme.txt": b"hi"})
    names = [info.filename for info in safe_members(archive, 2**20)]
    assert names == ["a/Crazing/x.png", "a/readme.txt"]
