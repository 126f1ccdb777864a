"""Writing a .npy file row by row, so decoded data never has to sit in memory all at once."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_MAGIC = b"\x93NUMPY\x01\x00"  # format version 1.0
_HEADER_BYTES = 256  # room for any shape; a multiple of 64 keeps the data aligned as numpy likes


class NpyAppender:
    """Appends rows of a fixed dtype and row shape to `<path>.partial`; `finish()` makes it `<path>`.

    The header is reserved first and written last, once the number of rows is known.
    """

    def __init__(self, path: str | Path, dtype: np.dtype | str, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._file = self.partial.open("wb")
        self._file.write(b" " * _HEADER_BYTES)

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} appended to a file of rows {self.row_shape}")
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]

    def finish(self) -> Path:
        self._file.seek(0)
        self._file.write(_header(self.dtype, (self.rows, *self.row_shape)))
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    text = repr(fields).encode("latin1")
    length = _HEADER_BYTES - len(_MAGIC) - 2
    body = text + b" " * (length - len(text) - 1) + b"\n"
    return _MAGIC + length.to_bytes(2, "little") + body
