"""Feature arithmetic whose bits do not depend on the CPU, the SIMD width, the C library or a BLAS.

Elementwise +, -, *, / and sqrt are correctly rounded by IEEE 754 on every CPU, so they are reproducible
as they are. Two things are not: sums whose order a library picks for the CPU (BLAS kernels and thread
splits), and transcendental functions, whose last bit depends on the implementation (NumPy uses Intel's
SVML on AVX-512 CPUs and the C library elsewhere). This module replaces both where featurize needs them:

- `sparse_row_product` multiplies by a sparse filter bank with each output summed in an order that
  depends on the data's shape only;
- `log10_float32` is log10 correctly rounded to float32: a function of its input alone, so every
  machine gets the same bits whatever log10 it has.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext

import numpy as np

# How far (in float64 ulps) the log10 at hand may be from the exact value. C libraries and SVML promise
# a few ulps (glibc: 2, SVML: 4); 1024 leaves a wide margin and still flags only about 2 * 1024 / 2**29
# (4 in a million) results as too close to a float32 rounding boundary to round without the exact value.
LOG10_ERROR_ULPS = 1024.0
# Decimal digits for the exact log10 of the flagged values; raised until the result is clear of the
# boundary (worst cases for double -> float32 rounding need far fewer than 40 digits).
EXACT_DIGITS = 40
MAX_EXACT_DIGITS = 640


@dataclass(frozen=True)
class SparseRows:
    """The non-zero entries of a matrix, row by row, for `sparse_row_product`."""
    shape: tuple[int, int]
    rows: np.ndarray      # row of each non-zero, ascending
    columns: np.ndarray   # its column, ascending within a row
    values: np.ndarray    # float64

    @classmethod
    def from_dense(cls, matrix: np.ndarray) -> "SparseRows":
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {matrix.shape}")
        rows, columns = np.nonzero(matrix)  # row-major order: by row, then by column
        return cls(matrix.shape, rows, columns, matrix[rows, columns])


def sparse_row_product(matrix: SparseRows, x: np.ndarray) -> np.ndarray:
    """`matrix @ x` with each output element summed over its row's non-zeros in an order fixed by NumPy's code.

    Each term is one IEEE product; `np.add.reduceat` then sums every row's terms as NumPy's plain C
    pairwise summation does (sequential below 8 terms, 8 interleaved partial sums above), an order that
    depends on the number of terms only, never on the CPU's SIMD width. A BLAS would pick the order (and
    its use of FMA) from the CPU model and the thread count.
    """
    x = np.asarray(x, dtype=np.float64)
    n_rows, n_columns = matrix.shape
    if x.ndim != 2 or x.shape[0] != n_columns:
        raise ValueError(f"cannot multiply a {matrix.shape} matrix by an array of shape {x.shape}")
    out = np.zeros((n_rows, x.shape[1]))
    if len(matrix.values) == 0:
        return out
    terms = matrix.values[:, np.newaxis] * x[matrix.columns]
    occupied, starts = np.unique(matrix.rows, return_index=True)
    out[occupied] = np.add.reduceat(terms, starts, axis=0)
    return out


def _exact_beyond(x: float, midpoint: float) -> bool:
    """Whether |log10(x)| exceeds |midpoint|, decided with exact decimal arithmetic."""
    target = abs(Decimal(midpoint))  # exact: every float64 is a finite decimal (at most 767 digits)
    digits = EXACT_DIGITS
    while digits <= MAX_EXACT_DIGITS:
        with localcontext() as context:
            context.prec = digits
            value = abs(Decimal(x).log10())  # correctly rounded to `digits` significant digits
        with localcontext() as context:
            context.prec = 2 * MAX_EXACT_DIGITS  # enough for the comparisons below to be exact
            # Rounding moved `value` by at most half a unit in its last digit, less than `slack`.
            slack = value.scaleb(1 - digits)
            if value - slack > target:
                return True
            if value + slack < target:
                return False
        digits *= 2
    raise ArithmeticError(f"log10({x!r}) is within 1e-{MAX_EXACT_DIGITS} of a float32 rounding boundary")


def log10_float32(x: np.ndarray) -> np.ndarray:
    """log10 of positive finite float64 values, correctly rounded to float32 (returned as float64).

    NumPy's log10 is within LOG10_ERROR_ULPS of the exact value, so rounding it to float32 gives the
    correctly rounded result unless it lies that close to the midpoint between two float32 neighbours;
    those few are decided with exact decimal arithmetic. The result is therefore the same function of
    the input on every machine, whichever log10 (SVML, glibc, ...) NumPy happens to call.

    Where a float64 lies on the float32 grid shows in the 29 low bits of its significand (53 - 24 bits):
    all zero on a float32, 2**28 on a midpoint, each unit one float64 ulp. log10 of a float64 other than
    1 is never below 1e-17 in magnitude, so float32 subnormals, whose grid differs, cannot occur.
    """
    x = np.asarray(x, dtype=np.float64)
    if not (np.isfinite(x) & (x > 0)).all():
        raise ValueError("log10_float32 takes positive finite values only")
    shape, x = x.shape, x.ravel()
    approx = np.log10(x)
    result = approx.astype(np.float32).astype(np.float64)  # right unless approx is near a midpoint
    bits = approx.view(np.uint64)
    offset = (bits & _BELOW_FLOAT32).astype(np.int64) - _MIDPOINT
    for i in np.flatnonzero(np.abs(offset) <= LOG10_ERROR_ULPS):
        toward_zero = bits[i] & ~_BELOW_FLOAT32          # the float32 grid point below |approx|
        away = toward_zero + np.uint64(1 << _DROPPED_BITS)  # the next one up (carries into the exponent)
        midpoint = toward_zero | np.uint64(_MIDPOINT)
        beyond = _exact_beyond(float(x[i]), float(midpoint.view(np.float64)))
        result[i] = (away if beyond else toward_zero).view(np.float64)
    return result.reshape(shape)


_DROPPED_BITS = 52 - 23  # float64 significand bits that float32 does not have
_BELOW_FLOAT32 = np.uint64((1 << _DROPPED_BITS) - 1)
_MIDPOINT = 1 << (_DROPPED_BITS - 1)
