"""Same bits on every CPU: the pieces of the pipeline, run in fresh processes under other dispatch settings.

A process fixes its CPU dispatch when NumPy, OpenBLAS and TensorFlow load, so every variant runs
`tests.determinism_probe` in its own subprocess and the digests of its arrays are compared. The
variants are what a pinned run must be immune to: another NumPy SIMD level (AVX-512, AVX2, SSE3), other
OpenBLAS kernels and thread counts, one core instead of two, and a user's own oneDNN settings. Without
the pins (VAPM_CPU_DISPATCH=native) this AVX-512 machine computes other training results, which shows
that the pins are what makes them equal (docs/determinism.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal, localcontext
from pathlib import Path

import numpy as np
import pytest

from vapm.config.cpu_dispatch import (
    ALWAYS_PINNED,
    OPT_OUT_VALUE,
    OPT_OUT_VARIABLE,
    ComputeError,
    configure_compute,
    pin_cpu_dispatch,
)
from vapm.data.features.reproducible import SparseRows, log10_float32, sparse_row_product

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every variable that changes how NumPy, OpenBLAS, oneDNN or TensorFlow compute, cleared before each variant.
DISPATCH_VARIABLES = {*ALWAYS_PINNED, "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                      "NPY_ENABLE_CPU_FEATURES", OPT_OUT_VARIABLE}
NUMPY_AVX512 = ALWAYS_PINNED["NPY_DISABLE_CPU_FEATURES"]
NUMPY_BELOW_SSE3 = "SSSE3 SSE41 POPCNT SSE42 AVX F16C FMA3 AVX2"
NATIVE = {OPT_OUT_VARIABLE: OPT_OUT_VALUE}
CPU_FLAGS = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
HAS_AVX512 = "avx512f" in CPU_FLAGS
HAS_AVX2_FMA = {"avx2", "fma"} <= set(CPU_FLAGS)
needs_avx2_fma = pytest.mark.skipif(not HAS_AVX2_FMA, reason="the pins cover x86-64 CPUs with AVX2 + FMA")


def probe(pieces: list[str], env: dict[str, str] | None = None, cpus: str | None = None,
          emulate: str | None = None, timeout: int = 900) -> dict:
    """Digests from a fresh process: `env` on top of a dispatch-neutral environment, optionally pinned to
    the CPUs `cpus` (taskset) or run on an emulated CPU model (qemu-x86_64 -cpu `emulate`)."""
    clean = {key: value for key, value in os.environ.items() if key not in DISPATCH_VARIABLES}
    command = [sys.executable, "-m", "tests.determinism_probe", *pieces]
    if emulate:
        command = ["qemu-x86_64", "-cpu", emulate, *command]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    done = subprocess.run(command, cwd=REPO_ROOT, env={**clean, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def digests(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "compute"}


def differing(a: dict, b: dict) -> list[str]:
    return sorted(key for key in digests(a) if a[key] != b.get(key))


# --- the exact arithmetic featurize uses ----------------------------------------------------------

def exact_log10_float32(x: float) -> np.float32:
    """log10(x) correctly rounded to float32, by brute force: the nearest of three float32 candidates."""
    with localcontext() as context:
        context.prec = 100
        exact = Decimal(x).log10()
        guess = np.float32(float(exact))
        candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
        return min(candidates, key=lambda c: abs(Decimal(float(c)) - exact))


def test_log10_float32_is_correctly_rounded_even_next_to_a_rounding_boundary():
    rng = np.random.default_rng(0)
    spread = 10.0 ** rng.uniform(-12, 3, 500)
    # log10 of these lies within a float64 ulp or so of the midpoint between two float32 values, where
    # rounding NumPy's float64 log10 to float32 is wrong about half of the time.
    grid = rng.uniform(-12, 3, 500).astype(np.float32)
    on_midpoints = 10.0 ** ((grid.astype(np.float64) + np.nextafter(grid, np.float32(np.inf))) / 2)
    for values in (spread, on_midpoints):
        got = log10_float32(values)
        assert got.dtype == np.float64 and np.array_equal(got, got.astype(np.float32))
        assert [float(g) for g in got] == [float(exact_log10_float32(v)) for v in values]
    naive = np.log10(on_midpoints).astype(np.float32)
    assert (naive != log10_float32(on_midpoints)).any()  # the boundary cases are really exercised
    assert log10_float32(np.array([1.0, 10.0, 1e-10]).reshape(3, 1)).ravel().tolist() == [0.0, 1.0, -10.0]
    with pytest.raises(ValueError, match="positive"):
        log10_float32(np.array([1.0, 0.0]))


def test_sparse_row_product_is_the_matrix_product_of_the_non_zeros():
    rng = np.random.default_rng(1)
    matrix = np.where(rng.random((6, 40)) < 0.3, rng.random((6, 40)), 0.0)
    matrix[3] = 0.0  # an empty filter gives a zero row
    x = rng.random((40, 7))
    got = sparse_row_product(SparseRows.from_dense(matrix), x)
    assert np.array_equal(got[3], np.zeros(7))
    # n positive terms, each a rounded product, summed in any order by n - 1 rounded additions: within
    # n * 2**-53 (to first order) of the exact sum, and so is the BLAS product, so they differ by < 2n * 2**-53.
    n_terms = int((matrix != 0).sum(axis=1).max())
    np.testing.assert_allclose(got, matrix @ x, rtol=2 * n_terms * 2**-53, atol=0)
    with pytest.raises(ValueError, match="cannot multiply"):
        sparse_row_product(SparseRows.from_dense(matrix), x[:5])


# --- the compute configuration ------------------------------------------------------------------

def test_pinning_sets_the_dispatch_variables_unless_the_user_opts_out():
    environ = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    pins = pin_cpu_dispatch(environ)
    assert environ["ONEDNN_MAX_CPU_ISA"] == "AVX2" and environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert "AVX512_SKX" in environ["NPY_DISABLE_CPU_FEATURES"]
    assert ("OPENBLAS_CORETYPE" in environ) == bool(pins.cpu_has_avx2_fma)
    opted_out = {OPT_OUT_VARIABLE: OPT_OUT_VALUE}
    assert pin_cpu_dispatch(opted_out).opted_out and opted_out == {OPT_OUT_VARIABLE: OPT_OUT_VALUE}


@needs_avx2_fma
def test_this_test_process_is_pinned_and_bad_thread_counts_are_refused():
    report = configure_compute(2)
    assert report.pinned, report.problems
    assert "AVX512" not in (report.numpy_dispatch or "")
    with pytest.raises(ComputeError, match="positive integer"):
        configure_compute(0)


def test_numpy_imported_before_vapm_is_reported_as_not_pinned():
    code = ("import numpy, vapm; from vapm.config.cpu_dispatch import configure_compute; "
            "print(configure_compute(1).problems)")
    clean = {key: value for key, value in os.environ.items() if key not in DISPATCH_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=clean, capture_output=True, text=True,
                          timeout=300, check=True)
    assert "numpy was imported before vapm" in done.stdout


# --- featurize, sample data and the SVM in other processes ------------------------------------------

@needs_avx2_fma
def test_features_are_the_same_bits_under_every_numpy_simd_level_blas_kernel_and_core_count():
    pieces = ["synth", "features", "svm"]
    pinned = probe(pieces)
    assert pinned["compute"]["pinned"], pinned["compute"]["problems"]
    # The features do not even need the pins: their arithmetic is exact or fixed-order (reproducible.py).
    unpinned_variants = {
        "native": NATIVE,  # AVX-512 SVML log10/exp, OpenBLAS SkylakeX kernels on an AVX-512 machine
        "sse3": {**NATIVE, "NPY_DISABLE_CPU_FEATURES": f"{NUMPY_AVX512} {NUMPY_BELOW_SSE3}",
                 "OPENBLAS_NUM_THREADS": "1"},
    }
    for name, env in unpinned_variants.items():
        other = probe(pieces, env)
        assert not other["compute"]["pinned"]
        assert set(differing(pinned, other)) <= {"svm_C0.01", "svm_C1.0"}, name  # SVM: BLAS, see below
    # The SVM multiplies with BLAS, so it needs the pinned OpenBLAS kernels: then nothing differs.
    one_core = probe(pieces, {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_NUM_THREADS": "1"}, cpus="0")
    assert differing(pinned, one_core) == []


@needs_avx2_fma
def test_training_is_the_same_bits_on_one_or_two_cores_whatever_the_user_set_for_onednn():
    pinned = probe(["train", "anomaly"])
    assert pinned["compute"]["pinned"], pinned["compute"]["problems"]
    assert pinned["compute"]["tensorflow_threads"] == [2, 2]
    assert {"vision_scratch_weights", "patchcore_bank", "patchcore_scores"} <= set(pinned)
    # A 1-core machine (still 2 threads), and a user who asked for other oneDNN kernels: pins win.
    other = probe(["train", "anomaly"], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "TF_ENABLE_ONEDNN_OPTS": "0"},
                  cpus="0")
    assert differing(pinned, other) == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_AVX512, reason="shows what AVX-512 kernels change: needs an AVX-512 CPU")
def test_without_the_pins_avx512_kernels_change_the_training_and_the_log10():
    pinned = probe(["features", "train", "anomaly"])
    native = probe(["features", "train", "anomaly"], NATIVE)
    assert not native["compute"]["pinned"]
    changed = differing(pinned, native)
    assert {"vision_scratch_weights", "acoustic_cnn_weights"} <= set(changed)
    assert "acoustic_images" not in changed and "wavelet_energies" not in changed  # exact by construction
    # What the pins emulate, set by hand on an unpinned process, gives the pinned bits.
    by_hand = probe(["train"], {**NATIVE, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert differing({k: pinned[k] for k in by_hand if k != "compute"}, by_hand) == []


@pytest.mark.soak
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
# EPYC-Rome is the machine class on which the numbers once moved; Haswell-v4 is Intel's first AVX2 + FMA CPU.
# Ten minutes each under emulation: run when asked for (pytest -m soak), so that .ci/run stays within 40 minutes
# while it runs every README command.
@pytest.mark.parametrize("cpu_model", ["EPYC-Rome", "Haswell-v4"])
def test_features_and_svm_are_the_same_bits_on_emulated_avx2_cpus(cpu_model):
    # qemu reports the model's CPUID (vendor, AVX2 + FMA without AVX-512, cache sizes), so NumPy and
    # OpenBLAS dispatch as on that CPU; IEEE arithmetic is emulated exactly. About 10 minutes each.
    pieces = ["synth", "features", "svm"]
    emulated = probe(pieces, emulate=cpu_model, timeout=3600)
    assert emulated["compute"]["pinned"], emulated["compute"]["problems"]
    assert differing(probe(pieces), emulated) == []
