"""Rows read from and streamed into .npy/.npz files: the same values as NumPy's own reader, the same bytes as
np.savez, and a clear error for what cannot be read row by row."""
from __future__ import annotations

import hashlib
import pickle
import zipfile

import numpy as np
import pytest

from vapm.core.npy_rows import NpyRows, NpzWriter


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ARRAYS = {
    "images": np.random.default_rng(0).integers(0, 256, (37, 5, 7), dtype=np.uint8),
    "feature_images": np.random.default_rng(1).standard_normal((37, 3, 4)).astype(np.float32),
    "labels": np.arange(37, dtype=np.int64) % 3,
    "splits": np.array(["train", "test"] * 18 + ["train"]),
    "files": np.array([f"class/{i}.png" for i in range(37)]),
    "classes": np.array(["a", "b", "c"]),
}


@pytest.mark.parametrize("chunk", [1, 5, 37])
def test_a_streamed_npz_is_byte_for_byte_what_np_savez_writes(tmp_path, chunk):
    expected = tmp_path / "savez.npz"
    with open(expected, "wb") as fh:
        np.savez(fh, **ARRAYS)
    written = tmp_path / "streamed.npz"
    with NpzWriter(written) as npz:
        for name, array in ARRAYS.items():
            if array.dtype.kind in "uif" and array.ndim == 3:
                with npz.stream(name, array.dtype, array.shape) as rows:
                    for start in range(0, len(array), chunk):
                        rows.write(array[start:start + chunk])
            else:
                npz.add(name, array)
    assert sha(written) == sha(expected)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_write_leaves_no_file_and_a_short_stream_is_refused(tmp_path):
    target = tmp_path / "features" / "image" / "features.npz"  # folders it made go too
    with pytest.raises(ValueError, match="3 rows written of the 4 announced"):
        with NpzWriter(target) as npz:
            with npz.stream("images", np.uint8, (4, 2)) as rows:
                rows.write(np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="rows of float64"):
        with NpzWriter(target) as npz:
            with npz.stream("images", np.uint8, (4, 2)) as rows:
                rows.write(np.zeros((4, 2)))
    assert not list(tmp_path.iterdir())
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError):
        with NpzWriter(tmp_path / "kept" / "features.npz") as npz:
            with npz.stream("images", np.uint8, (1,)) as rows:
                rows.write(np.zeros((2,), np.uint8))
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]  # a folder it found stays


@pytest.fixture
def stored(tmp_path):
    npz, npy = tmp_path / "features.npz", tmp_path / "clips.npy"
    np.savez(npz, **ARRAYS)
    np.save(npy, ARRAYS["feature_images"])
    return npz, npy


@pytest.mark.parametrize("key", [
    3, -1, slice(None), slice(4, 20, 3), slice(30, 3, -2), [5, 6, 7, 2, 2, 36], np.array([], np.int64), [-2, 0],
    np.arange(37) % 2 == 0, np.int64(9)])
def test_rows_read_as_numpy_indexes_them(stored, key):
    npz, npy = stored
    for rows, expected in ((NpyRows(npz, "images"), ARRAYS["images"]), (NpyRows(npz, "labels"), ARRAYS["labels"]),
                           (NpyRows(npy), ARRAYS["feature_images"])):
        got = rows[key]
        np.testing.assert_array_equal(got, expected[key])
        assert got.dtype == expected.dtype and got.shape == expected[key].shape
    rows = NpyRows(npz, "feature_images")
    assert (rows.shape, rows.dtype, rows.ndim, len(rows), np.shape(rows)) == \
        ((37, 3, 4), np.float32, 3, 37, (37, 3, 4))
    np.testing.assert_array_equal(np.asarray(rows), ARRAYS["feature_images"])
    np.testing.assert_array_equal(np.concatenate(list(rows.batches([1, 2, 3, 30, 31], size=2))),
                                  ARRAYS["feature_images"][[1, 2, 3, 30, 31]])


def test_rows_pickle_as_their_path_and_reopen(stored):
    rows = NpyRows(stored[0], "images")
    rows[0]  # opens the file
    again = pickle.loads(pickle.dumps(rows))
    np.testing.assert_array_equal(again[[4, 1]], ARRAYS["images"][[4, 1]])


def test_what_cannot_be_read_by_rows_is_refused_with_the_reason(tmp_path, stored):
    npz, _ = stored
    with pytest.raises(IndexError, match="rows 40..40 asked of 37"):
        NpyRows(npz, "images")[[40]]
    with pytest.raises(IndexError, match="1-D array"):
        NpyRows(npz, "images")[np.zeros((2, 2), np.int64)]
    with pytest.raises(KeyError, match="no array 'pixels'"):
        NpyRows(npz, "pixels")
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, images=ARRAYS["images"])
    with pytest.raises(ValueError, match="compressed"):
        NpyRows(compressed, "images")
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(ARRAYS["feature_images"]))
    with pytest.raises(ValueError, match="Fortran order"):
        NpyRows(fortran)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, ARRAYS["feature_images"])
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match="shorter than its header"):
        NpyRows(truncated)
    with zipfile.ZipFile(npz) as archive:
        assert archive.getinfo("images.npy").compress_type == zipfile.ZIP_STORED
