"""Arrays on disk read and written a few rows at a time, so that memory does not grow with the number of items.

* `NpyRows` reads rows of a .npy file, or of an uncompressed member of an .npz (what `np.savez` writes), with
  positioned reads (`os.pread`) into fresh arrays. Not a memory map on purpose: the pages a map has touched count
  in the process's resident memory until the kernel needs them, so mapping a whole dataset and reading it once
  grows the resident size by the dataset's size (measured by `make bench-scale`).
* `NpzWriter` writes an .npz member by member; a member can be streamed rows first, header known in advance. The
  bytes are those `np.savez` writes for the same arrays in the same order (tests/core/test_npy_rows.py), so
  features written this way keep their DVC hashes.
"""
from __future__ import annotations

import os
import shutil
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_LOCAL_HEADER = struct.Struct(zipfile.structFileHeader)
_NAME_LENGTH, _EXTRA_LENGTH = 10, 11  # fields of the local file header (zipfile._FH_FILENAME_LENGTH ...)


class NpyRows:
    """The rows of an array on disk: `rows[i]`, `rows[a:b]`, `rows[indices]` and `rows[mask]` read just those rows.

    `np.asarray(rows)` reads all of them. `path` is a .npy file, or an .npz with `member` naming one of its
    arrays (stored, not compressed, as np.savez stores them). Pickles as its path: a worker process reopens it."""

    def __init__(self, path: str | Path, member: str | None = None):
        self.path, self.member = Path(path), member
        start = _member_start(self.path, member) if member is not None else 0
        with open(self.path, "rb") as file:
            file.seek(start)
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"{path}: .npy format {version} is not read row by row (1.0 and 2.0 are)")
            shape, fortran_order, dtype = read_header(file)
            self.offset = file.tell()
        where = f"{self.path}" + (f" member {member}" if member else "")
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError(f"{where}: rows can be read only from a C-ordered array of plain values with at least "
                             f"one axis, found {dtype} {shape}{' in Fortran order' if fortran_order else ''}")
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        if self.offset + self.shape[0] * self.row_bytes > self.path.stat().st_size:
            raise ValueError(f"{where} is shorter than its header's {self.shape[0]} rows of {self.row_bytes} bytes")
        self._descriptor: int | None = None

    ndim = property(lambda self: len(self.shape))
    nbytes = property(lambda self: self.shape[0] * self.row_bytes)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"NpyRows({str(self.path)!r}{f', {self.member!r}' if self.member else ''}: {self.dtype} {self.shape})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_descriptor": None}

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_descriptor", None) is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {int(key)} of {len(self)}")
            return self._read(np.array([index]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:  # one read, without listing the rows (a 1-D array of pixels has billions)
                return self._read_run(start, max(start, stop))
            return self._read(np.arange(start, stop, step))
        indices = np.asarray(key)
        if indices.dtype == bool:
            if indices.shape != (len(self),):
                raise IndexError(f"a boolean mask of shape {indices.shape} for {len(self)} rows")
            return self._read(np.flatnonzero(indices))
        if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
            raise IndexError(f"rows are chosen by an int, a slice, or a 1-D array of ints or booleans, got {key!r}")
        indices = indices.astype(np.int64) + np.where(indices < 0, len(self), 0)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"rows {indices.min()}..{indices.max()} asked of {len(self)}")
        return self._read(indices)

    def batches(self, rows: np.ndarray | None = None, size: int = 256) -> Iterator[np.ndarray]:
        """`rows` (default: all) in order, `size` at a time."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), size):
            yield self[rows[start:start + size]]

    def _read_run(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        self._fill(memoryview(out.reshape(-1).view(np.uint8)), start)
        return out

    def _read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        if not len(indices):
            return out
        buffer = memoryview(out.reshape(-1).view(np.uint8))
        # One read per run of consecutive rows.
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(indices)]):
            self._fill(buffer[first * self.row_bytes:last * self.row_bytes], int(indices[first]))
        return out

    def _fill(self, target: memoryview, row: int) -> None:
        if self._descriptor is None:
            self._descriptor = os.open(self.path, os.O_RDONLY)
        position = self.offset + row * self.row_bytes
        while len(target):
            got = os.preadv(self._descriptor, [target], position)
            if got == 0:
                raise OSError(f"{self.path} ended early: rewritten while being read?")
            target, position = target[got:], position + got


def _member_start(path: Path, member: str) -> int:
    """Where member `member` (an array name, without .npy) of an .npz starts in the file."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{member}.npy")
        except KeyError:
            raise KeyError(f"{path} has no array {member!r}: it holds {sorted(n[:-4] for n in archive.namelist())}") \
                from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: array {member!r} is compressed (np.savez_compressed); rows can be read only from "
                         "stored members (np.savez)")
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        header = _LOCAL_HEADER.unpack(file.read(_LOCAL_HEADER.size))
    return info.header_offset + _LOCAL_HEADER.size + header[_NAME_LENGTH] + header[_EXTRA_LENGTH]


class RowStream:
    """An .npz member being written rows first; its shape was given, so it must receive exactly that many rows."""

    def __init__(self, handle: Any, name: str, dtype: np.dtype, shape: tuple[int, ...]):
        self._handle, self.name, self.dtype, self.shape, self.written = handle, name, dtype, shape, 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.dtype != self.dtype or rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.name}: rows of {rows.dtype} {rows.shape[1:]} written to an array of {self.dtype} "
                             f"{self.shape[1:]}")
        if self.written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.name}: more than the {self.shape[0]} rows announced")
        self._handle.write(np.ascontiguousarray(rows).tobytes())
        self.written += len(rows)


class NpzWriter:
    """An .npz written member by member into `<path>.<pid>.tmp`, renamed to `path` only when every member is whole.

        with NpzWriter(path) as npz:
            npz.add("labels", labels)
            with npz.stream("images", np.uint8, (n, 64, 64)) as images:
                for chunk in chunks: images.write(chunk)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file: Any = None
        self._archive: zipfile.ZipFile | None = None
        self._created: Path | None = None

    def __enter__(self) -> NpzWriter:
        missing = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
        self._created = missing[-1] if missing else None  # removed again if the writing fails
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.temporary, "wb")  # a file object stops numpy's habit of appending ".npz"
        self._archive = zipfile.ZipFile(self._file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
        return self

    def add(self, name: str, array: np.ndarray) -> None:
        with self._archive.open(f"{name}.npy", "w", force_zip64=True) as handle:  # as np.savez (numpy gh-10776)
            np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)

    def stream(self, name: str, dtype: Any, shape: tuple[int, ...]) -> _Streaming:
        return _Streaming(self._archive, name, np.dtype(dtype), tuple(int(n) for n in shape))

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            try:
                self._archive.close()
            except ValueError:  # a member still open for writing: only possible when the writing failed
                if kind is None:
                    raise
            finally:
                self._file.close()
            if kind is None:
                os.replace(self.temporary, self.path)
        finally:
            self.temporary.unlink(missing_ok=True)
            if kind is not None and self._created is not None:
                shutil.rmtree(self._created, ignore_errors=True)


class _Streaming:
    def __init__(self, archive: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...]):
        self._archive, self._args = archive, (name, dtype, shape)

    def __enter__(self) -> RowStream:
        name, dtype, shape = self._args
        self._handle = self._archive.open(f"{name}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._handle, header)  # what np.save writes for shapes like these
        self._stream = RowStream(self._handle, name, dtype, shape)
        return self._stream

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self._handle.close()
        if kind is None and self._stream.written != self._args[2][0]:
            raise ValueError(f"{self._args[0]}: {self._stream.written} rows written of the {self._args[2][0]} "
                             "announced")


class Selection:
    """Some rows of an array, in memory or on disk (`NpyRows`), read a batch at a time: how the trainers hand a
    split to Keras without copying it out of the dataset first. `np.asarray(selection)` reads them all."""

    def __init__(self, source: Any, rows: np.ndarray):
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)

    shape = property(lambda self: (len(self.rows), *np.shape(self.source)[1:]))
    dtype = property(lambda self: self.source.dtype)
    ndim = property(lambda self: np.ndim(self.source))

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, positions: Any) -> np.ndarray:
        """The rows at `positions` (0..len-1) of the selection, in that order."""
        return np.asarray(self.source[self.rows[np.asarray(positions, dtype=np.int64)]])

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.rows), size):
            yield np.asarray(self.source[self.rows[start:start + size]])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = np.asarray(self.source[self.rows])
        return whole if dtype is None else whole.astype(dtype, copy=False)


def in_chunks(x: Any, size: int) -> Iterator[np.ndarray]:
    """An array's rows `size` at a time, whether it is in memory, on disk or a selection of either."""
    if isinstance(x, Selection):
        yield from x.chunks(size)
    elif isinstance(x, NpyRows):
        yield from x.batches(size=size)
    else:
        x = np.asarray(x)
        for start in range(0, len(x), size):
            yield x[start:start + size]
