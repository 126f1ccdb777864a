"""Pin what makes floating-point results depend on the CPU, so every x86-64 CPU with AVX2 + FMA computes the same bits.

Three libraries choose their numerics from the CPU they run on (docs/determinism.md has the evidence):

- oneDNN (inside TensorFlow: convolutions, matrix products, pooling, softmax) JIT-compiles kernels for the
  widest instruction set it finds; AVX-512 kernels block and accumulate differently from AVX2 ones.
- NumPy dispatches some functions to AVX-512 code (e.g. float64 log10/exp/power through Intel's SVML), which
  rounds differently from the C library used elsewhere.
- OpenBLAS picks its kernels (SkylakeX, Haswell, Zen, ...) from the CPU model.

All three read their choice from the environment once, when they load, so `pin_cpu_dispatch` must run before
NumPy or TensorFlow is imported: `import vapm` does it (see `vapm/__init__.py`), and every stage imports
`vapm` first. Thread counts also change how reductions are split; `configure_compute` fixes them and reports
whether the pins really took effect. `VAPM_CPU_DISPATCH=native` leaves every library free (faster on
AVX-512 machines, but results then depend on the CPU).
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field

from vapm.core.errors import VapmError

# Results are identical for any fixed count; 2 suits the 2-core machines the demo is timed on. A different
# count gives (slightly) different numbers, so it is part of what a result depends on, like the seed.
DEFAULT_THREADS = 2

OPT_OUT_VARIABLE = "VAPM_CPU_DISPATCH"
OPT_OUT_VALUE = "native"

# Every AVX-512 target NumPy (1.26-2.x) may dispatch to; unknown names are ignored by NumPy, so listing
# more than a given build knows is harmless. Disabled, NumPy runs the same AVX2/baseline loops as on
# a CPU without AVX-512.
NUMPY_AVX512_FEATURES = ("AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL "
                         "AVX512_ICL AVX512_SPR")
# oneDNN's AVX2 kernels; ONEDNN_MAX_CPU_ISA is a ceiling, so it is safe on smaller CPUs too.
ONEDNN_ISA = "AVX2"
# The OpenBLAS kernel set for AVX2 + FMA CPUs (Intel Haswell and later, AMD Zen); only valid on such CPUs.
OPENBLAS_CORE = "Haswell"

# Set unconditionally: oneDNN's ISA, its float32 math (no implicit bf16/tf32 down-conversion), TensorFlow's
# use of oneDNN (a user's TF_ENABLE_ONEDNN_OPTS=0 would route work through other kernels) and NumPy's dispatch.
ALWAYS_PINNED = {
    "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA,
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512_FEATURES,
}
# Libraries whose dispatch is fixed when they load: pinning after them has no effect.
EARLY_LIBRARIES = ("numpy", "tensorflow")


class ComputeError(VapmError, ValueError):
    """A compute setting (thread count) is invalid."""


@dataclass
class DispatchPins:
    """What `pin_cpu_dispatch` set, and what was already loaded (and so escaped the pins) when it ran."""
    environment: dict[str, str] = field(default_factory=dict)
    opted_out: bool = False
    cpu_has_avx2_fma: bool | None = None     # None: could not tell (not Linux x86-64)
    loaded_too_early: list[str] = field(default_factory=list)


@dataclass
class ComputeReport:
    """How this process computes, and every reason its results may differ from another machine's."""
    threads: int
    pins: DispatchPins
    numpy_dispatch: str | None = None       # NumPy's target for float64 log10, e.g. "baseline(SSE SSE2 SSE3)"
    blas: list[str] = field(default_factory=list)  # "<library> <version> <kernel set> threads=N"
    tensorflow_threads: tuple[int, int] | None = None  # (intra-op, inter-op) when TensorFlow is loaded
    problems: list[str] = field(default_factory=list)

    @property
    def pinned(self) -> bool:
        """True when nothing escaped the pins: results are those of any other pinned AVX2 + FMA machine."""
        return not self.problems


_pins: DispatchPins | None = None


def _cpu_has_avx2_fma() -> bool | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return None


def pin_cpu_dispatch(environ: os._Environ | dict[str, str] | None = None) -> DispatchPins:
    """Set the environment variables that make NumPy, OpenBLAS and oneDNN compute as on an AVX2 + FMA CPU.

    Must run before NumPy or TensorFlow is imported (they read these variables once, when they load);
    `import vapm` calls it. Returns what was set and which of those libraries had already loaded.
    """
    global _pins
    environ = os.environ if environ is None else environ
    pins = DispatchPins(loaded_too_early=[name for name in EARLY_LIBRARIES if name in sys.modules])
    if environ.get(OPT_OUT_VARIABLE, "").lower() == OPT_OUT_VALUE:
        pins.opted_out = True
    else:
        pins.environment = dict(ALWAYS_PINNED)
        pins.cpu_has_avx2_fma = _cpu_has_avx2_fma()
        if pins.cpu_has_avx2_fma:
            # Forcing Haswell kernels on a CPU without AVX2 would crash OpenBLAS with an illegal instruction.
            pins.environment["OPENBLAS_CORETYPE"] = OPENBLAS_CORE
        environ.update(pins.environment)
    if environ is os.environ:
        _pins = pins
    return pins


def dispatch_pins() -> DispatchPins:
    """The pins of this process (pinning now if `vapm` was somehow not imported first)."""
    return _pins if _pins is not None else pin_cpu_dispatch()


def _numpy_dispatch() -> str | None:
    try:
        from numpy.lib.introspect import opt_func_info  # NumPy >= 2.0
    except ImportError:
        return None
    info = opt_func_info(func_name="log10", signature="float64")
    targets = [sig["current"] for sigs in info.values() for sig in sigs.values()]
    return targets[0] if targets else None


def _limit_blas_threads(threads: int) -> list[str]:
    from threadpoolctl import threadpool_info, threadpool_limits

    # Applied without a `with`: the limit holds for the rest of the process (loky workers set their own).
    threadpool_limits(limits=threads)
    return [f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture', '-')} "
            f"threads={pool.get('num_threads')}" for pool in threadpool_info()]


def _pin_tensorflow_threads(threads: int) -> tuple[tuple[int, int], str | None]:
    import tensorflow as tf

    problem = None
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TensorFlow's runtime already started (an earlier call in this process): its pools are fixed now.
        pass
    current = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    if current[0] != threads:
        problem = (f"TensorFlow started with {current[0] or 'one per core'} intra-op threads before "
                   f"configure_compute({threads}) ran")
    return current, problem


def configure_compute(threads: int = DEFAULT_THREADS, *, tensorflow: bool | None = None) -> ComputeReport:
    """Fix the thread pools to `threads` and check that the CPU-dispatch pins are in effect.

    Call it first in every stage, before TensorFlow runs an op (`vapm.config.seeding.set_global_seed` does).
    `tensorflow=None` configures TensorFlow only when it is already imported. Never raises for pins that
    did not take effect: they are listed in the report's `problems` (and `pinned` is then False).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ComputeError(f"compute threads must be a positive integer, got {threads!r}")
    pins = dispatch_pins()
    report = ComputeReport(threads=threads, pins=pins)
    if pins.opted_out:
        report.problems.append(f"{OPT_OUT_VARIABLE}={OPT_OUT_VALUE}: every library uses this CPU's widest kernels")
    elif pins.cpu_has_avx2_fma is False:
        report.problems.append("this CPU lacks AVX2 or FMA: results can differ from those of AVX2 + FMA CPUs")
    elif pins.cpu_has_avx2_fma is None:
        report.problems.append(f"cannot check AVX2 + FMA on {platform.machine()}: only x86-64 Linux is covered")
    for name in pins.loaded_too_early:
        report.problems.append(f"{name} was imported before vapm, so its CPU dispatch is not pinned: "
                               f"import vapm before {name}")
    for name, value in pins.environment.items():
        if os.environ.get(name) != value:
            report.problems.append(f"{name} was changed to {os.environ.get(name)!r} after vapm pinned it to {value!r}")

    report.numpy_dispatch = _numpy_dispatch()
    if report.numpy_dispatch and "AVX512" in report.numpy_dispatch and not pins.opted_out:
        report.problems.append(f"NumPy dispatches float64 log10 to {report.numpy_dispatch}")
    report.blas = _limit_blas_threads(threads)
    expected_core = pins.environment.get("OPENBLAS_CORETYPE")
    for line in report.blas:
        if line.startswith("openblas") and expected_core and expected_core not in line.split()[2:3]:
            report.problems.append(f"OpenBLAS runs '{line}', not the pinned {expected_core} kernels")

    if tensorflow or (tensorflow is None and "tensorflow" in sys.modules):
        report.tensorflow_threads, problem = _pin_tensorflow_threads(threads)
        if problem:
            report.problems.append(problem)
    return report


def describe(report: ComputeReport) -> str:
    """One line for logs: the settings results depend on, or why they may not be reproducible elsewhere."""
    if report.pinned:
        return (f"compute pinned: {report.threads} threads, oneDNN {ONEDNN_ISA}, NumPy {report.numpy_dispatch}, "
                f"BLAS {report.pins.environment.get('OPENBLAS_CORETYPE')}")
    return f"compute NOT pinned ({report.threads} threads): " + "; ".join(report.problems)
