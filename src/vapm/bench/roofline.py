"""Roofline: the machine's practical fp32 peak, each Keras model's multiply-adds, and the share of the peak an
epoch of training reaches.

- `product_costs(model)` / `model_flops(model)`: the multiply-adds of every convolution and matrix product of a
  built Keras model, read from the shapes of its traced TensorFlow graph (so nested models, shared layers and
  residual connections count exactly once, as they run). Training costs, per example, the forward pass (2 FLOPs
  per multiply-add) plus, for each product, one more forward's worth for every operand that depends on a
  trainable weight: the gradient of the weights if they train, the gradient of the input if anything upstream
  trains. With everything trainable that is the usual "backward = 2 x forward", less the first layer's input
  gradient, which nobody computes; with a frozen base (transfer learning) it is much less.
- `matmul_peak`: GFLOP/s of a large fp32 matmul through TensorFlow, best of several: what this machine does
  at best with the thread settings of the stages.
- `EpochClock` and `Recorder`: per-epoch wall and CPU seconds of every fit of a trainer, through the hook of
  `vapm.models.components.keras_fit.observing_fits`, with the FLOPs of the model being fitted.
- `measure_model(name, epochs)`: run a registered Keras model's real trainer on the features of the
  working directory (after `dvc repro featurize`), a few epochs, and return what the Recorder saw.

Worker command line (the benchmark runs each measurement in a fresh process; `vapm.bench.pipeline --roofline` drives it):

    python -m vapm.bench.roofline peak [--size 2048 --repeats 7]
    python -m vapm.bench.roofline model vision_scratch [--epochs 3]
    python -m vapm.bench.roofline profile vision_scratch [--epochs 2 --top 25]    # per-op times of the last epoch
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from vapm.core.errors import VapmError

# TensorFlow ops that multiply and add: what the roofline counts (elementwise ops, pooling and normalisation are
# memory traffic, not arithmetic worth a roofline).
PRODUCT_OPS = ("Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul", "BatchMatMulV2",
               "BatchMatMulV3")


class RooflineError(VapmError, ValueError):
    """A model whose products cannot be counted (unknown shapes)."""


@dataclass(frozen=True)
class ProductCost:
    """One convolution or matrix product of a model, per example."""
    layer: str      # the Keras layer it belongs to (its name scope)
    op: str         # TensorFlow op type
    macs: int       # multiply-adds in one forward pass of one example
    gradients: int  # operands whose gradient training computes (0, 1 or 2): each costs another `macs`


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs per example of one model as it is being trained (its current `trainable` flags)."""
    forward: float
    backward: float
    products: tuple[ProductCost, ...] = ()

    @property
    def training(self) -> float:
        return self.forward + self.backward

    def epoch(self, n_fit: int, n_val: int = 0) -> float:
        """One epoch: forward and backward of every fit example, forward of every validation example."""
        return n_fit * self.training + n_val * self.forward


def _static_size(shape: Any, what: str) -> int:
    dims = list(shape)
    if any(d is None for d in dims):
        raise RooflineError(f"{what} has an unknown dimension ({shape}): build the model with fixed input shapes")
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def op_macs(op: Any) -> int:
    """Multiply-adds of one traced TensorFlow product op, from its input and output shapes."""
    out = _static_size(op.outputs[0].shape, op.name)
    if op.type == "Conv2D" or op.type == "Conv3D":
        kernel = op.inputs[1].shape  # (kh, kw, in / groups, out) or (kd, kh, kw, in, out)
        return out * _static_size(kernel[:-1], op.name)
    if op.type == "DepthwiseConv2dNative":
        kernel = op.inputs[1].shape  # (kh, kw, channels, multiplier): each output sums kh x kw products
        return out * _static_size(kernel[:2], op.name)
    if op.type == "MatMul":
        a_shape = op.inputs[0].shape
        inner = a_shape[0] if op.get_attr("transpose_a") else a_shape[1]
        return out * int(inner)
    # BatchMatMul*: (..., m, k) x (..., k, n)
    a_shape = op.inputs[0].shape
    adjoint = op.get_attr("adj_x")
    inner = a_shape[-2] if adjoint else a_shape[-1]
    return out * int(inner)


def _layer_of(op_name: str, layer_names: set[str]) -> str:
    """The innermost Keras layer whose name scope holds the op (Keras suffixes scopes with _1, _2 ...)."""
    parts = op_name.split("/")[:-1]
    for part in reversed(parts):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layer_names:
                return candidate
    return "/".join(parts[1:]) or op_name


def _all_layers(model: Any) -> Iterable[Any]:
    for layer in model._flatten_layers(include_self=False, recursive=True):
        yield layer


def product_costs(model: Any) -> list[ProductCost]:
    """Every convolution and matrix product the model runs for one example, in graph order, with how many of
    its operands depend on a trainable weight (the gradients training computes for it)."""
    import tensorflow as tf

    specs = [tf.TensorSpec((1, *tuple(x.shape)[1:]), x.dtype) for x in model.inputs]
    if len(specs) == 1:
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs[0])
    else:
        concrete = tf.function(lambda *xs: model(list(xs), training=False)).get_concrete_function(*specs)
    graph = concrete.graph
    trainable_handles = {id(v.value.handle) if hasattr(v, "value") else id(v.handle)
                         for v in model.trainable_variables}
    # Tensors that depend on a trainable weight: the captured handles of trainable variables, then everything
    # computed from them (ops are listed in creation order, which is a topological order of the traced graph).
    depends: set[str] = {internal.name for external, internal in graph.captures if id(external) in trainable_handles}
    layer_names = {layer.name for layer in _all_layers(model)}
    costs: list[ProductCost] = []
    for op in graph.get_operations():
        if any(t.name in depends for t in op.inputs):
            depends.update(t.name for t in op.outputs)
        if op.type in PRODUCT_OPS:
            gradients = sum(1 for t in op.inputs[:2] if t.name in depends)
            costs.append(ProductCost(_layer_of(op.name, layer_names), op.type, op_macs(op), gradients))
    return costs


def model_flops(model: Any) -> ModelFlops:
    """FLOPs per example: forward (2 per multiply-add) and backward (2 per multiply-add per gradient)."""
    costs = product_costs(model)
    forward = 2.0 * sum(c.macs for c in costs)
    backward = 2.0 * sum(c.macs * c.gradients for c in costs)
    return ModelFlops(forward=forward, backward=backward, products=tuple(costs))


# --------------------------------------------------------------------------- the machine's peak

def matmul_peak(size: int = 2048, repeats: int = 7) -> dict[str, list[float]]:
    """GFLOP/s of `repeats` fp32 (size x size) @ (size x size) products through TensorFlow (after a warm-up),
    with whatever thread settings the process has (call `vapm.config.seeding.set_global_seed(..., threads=...)` first):
    per wall second (`wall`) and per second of the process's CPU time (`cpu`, all threads together)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    b = tf.constant(rng.standard_normal((size, size), dtype=np.float32))
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    flops = 2.0 * size ** 3
    rates: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        product(a, b).numpy()
        rates["wall"].append(flops / (time.perf_counter() - wall) / 1e9)
        rates["cpu"].append(flops / max(time.process_time() - cpu, 1e-9) / 1e9)
    return rates


# --------------------------------------------------------------------------- timing the epochs of real trainers

@dataclass
class PhaseRecord:
    """One fit: the model being fitted, its FLOPs per example and the wall/CPU seconds of each epoch."""
    phase: str
    model: str
    n_fit: int
    n_val: int
    batch_size: int
    validation_batch_size: int
    forward_flops: float
    backward_flops: float
    epoch_wall: list[float] = field(default_factory=list)
    epoch_cpu: list[float] = field(default_factory=list)

    @property
    def epoch_flops(self) -> float:
        return ModelFlops(self.forward_flops, self.backward_flops).epoch(self.n_fit, self.n_val)


@dataclass
class PredictRecord:
    """One batched forward pass over many items (the transfer model's feature cache, the test predictions)."""
    model: str
    n_items: int
    forward_flops: float
    wall: float
    cpu: float


def make_epoch_clock(wall: list[float], cpu: list[float]):
    """A Keras callback appending each epoch's wall and process-CPU seconds (validation included)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            wall.append(time.perf_counter() - self._start[0])
            cpu.append(time.process_time() - self._start[1])

    return EpochClock()


class Recorder:
    """A `keras_fit` observer: records every fit (per-epoch times, FLOPs) and every batched prediction."""

    def __init__(self, count_flops: bool = True):
        self.count_flops = count_flops
        self.phases: list[PhaseRecord] = []
        self.predictions: list[PredictRecord] = []

    def _flops(self, model: Any) -> ModelFlops:
        return model_flops(model) if self.count_flops else ModelFlops(0.0, 0.0)

    def fit_callback(self, model: Any, info: Any):
        flops = self._flops(model)
        record = PhaseRecord(info.phase, model.name, info.n_fit, info.n_val, info.batch_size,
                             info.validation_batch_size, flops.forward, flops.backward)
        self.phases.append(record)
        return make_epoch_clock(record.epoch_wall, record.epoch_cpu)

    def predicted(self, model: Any, n_items: int, wall: float, cpu: float) -> None:
        self.predictions.append(PredictRecord(model.name, n_items, self._flops(model).forward, wall, cpu))

    def as_dict(self) -> dict[str, Any]:
        return {"phases": [asdict(p) | {"epoch_flops": p.epoch_flops} for p in self.phases],
                "predictions": [asdict(p) for p in self.predictions]}


def measurement_settings(settings: Any, name: str, epochs: int) -> Any:
    """The settings with `name` trained for exactly `epochs` epochs per phase: its `train.epochs` (and a
    `fine_tune_epochs` that is on) set to `epochs`, early stopping and the learning-rate schedule off."""
    params = settings.model(name)
    changes: dict[str, Any] = {}
    overrides = getattr(params, "train", None)
    if overrides is not None:
        changes["train"] = overrides.model_copy(update={"epochs": epochs, "early_stopping_patience": 0,
                                                        "reduce_lr_patience": 0})
    if getattr(params, "fine_tune_epochs", 0):
        changes["fine_tune_epochs"] = epochs
    return settings.model_copy(update={"models": {**settings.models, name: params.model_copy(update=changes)}})


def keras_models(registry: dict[str, Any]) -> list[str]:
    return [name for name, entry in registry.items() if entry.artefact == "keras"]


def as_before():
    """vapm's fit as it was before docs/performance.md's changes, for before/after timing in one benchmark:
    Keras's own Adam (a dozen elementwise ops per weight) instead of the fused kernel, and validation and
    prediction in batches of 256 (through the fit loop's own hook, `keras_fit.fitting_with`)."""
    import keras

    from vapm.models.components.keras_fit import FitOptions, fitting_with

    return fitting_with(FitOptions(optimizer=lambda learning_rate: keras.optimizers.Adam(learning_rate=float(learning_rate)),
                                   predict_batch_size=256, validation_batch_size=256))


def measure_model(name: str, epochs: int = 3, count_flops: bool = True, before: bool = False) -> dict[str, Any]:
    """Train registered Keras model `name` with its real trainer on the features in the working directory,
    `epochs` epochs per phase, and return the seconds of every epoch with the FLOPs of what was fitted."""
    import tempfile
    from pathlib import Path

    from vapm.config.model_registry import get_entry
    from vapm.config.seeding import set_global_seed
    from vapm.config.settings import load_settings
    from vapm.models.components.keras_fit import observing_fits
    from vapm.training.run import LIVE_DIR, prepare_job

    started = time.perf_counter()
    entry = get_entry(name)
    if entry.artefact != "keras":
        raise RooflineError(f"{name} is not a Keras model (artefact {entry.artefact}): no epochs to time")
    settings = measurement_settings(load_settings(models=[name]), name, epochs)
    set_global_seed(settings.seed, tensorflow=True, threads=settings.compute.threads)
    recorder = Recorder(count_flops)
    with tempfile.TemporaryDirectory(prefix=f"vapm-roofline-{name}-") as scratch:
        job = prepare_job(entry, settings, Path(scratch) / LIVE_DIR)
        with observing_fits(recorder), (as_before() if before else contextlib.nullcontext()):
            entry.load_trainer().train(job)
    return {"runner": "vapm (before)" if before else "vapm", "model": name, "epochs": epochs, "total_seconds": time.perf_counter() - started,
            "threads": settings.compute.threads, **recorder.as_dict()}


# --------------------------------------------------------------------------- profiles: where the time goes

KERNEL_EVENT = re.compile(r"^[^:]+:[A-Za-z_]\w*$")


def op_times_from_trace(logdir: str) -> dict[str, float]:
    """Seconds per TensorFlow op (name:type) in a `tf.profiler.experimental` trace, summed over its threads."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise RooflineError(f"no profiler trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as trace:
        space.ParseFromString(trace.read())
    totals: dict[str, float] = {}
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if KERNEL_EVENT.search(name):  # "scope/op:OpType" events are the kernels
                    totals[name] = totals.get(name, 0.0) + event.duration_ps / 1e12
    return totals


def summarise_op_times(totals: dict[str, float], top: int = 25) -> list[tuple[str, float, float]]:
    """(what, seconds, share) rows: op types grouped by pass (fwd / bwd / optimizer), then the top single ops."""
    total = sum(totals.values()) or 1.0
    groups: dict[str, float] = {}
    for name, seconds in totals.items():
        scope, _, kind = name.rpartition(":")
        scope = scope.removeprefix("StatefulPartitionedCall/")
        stage = "bwd" if scope.startswith("gradient_tape") else \
            "opt" if re.match(r"^(fused_)?adam|^[a-z_]*optimizer", scope) else "fwd"
        groups[f"{stage} {kind}"] = groups.get(f"{stage} {kind}", 0.0) + seconds
    rows = [(k, v, v / total) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])[:top]]
    rows += [(f"  op {k.removeprefix('StatefulPartitionedCall/')}", v, v / total)
             for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
    return rows


def profile_model(name: str, epochs: int = 2, logdir: str | None = None, serial: bool = True) -> dict[str, float]:
    """Seconds per TensorFlow op during the last epoch of each fit of `name` (trainer as in `measure_model`).

    `serial` runs one op at a time (inter-op pool of 1; each op still uses `compute.threads` threads), so the
    op times add up to the step and say which op costs what; the stages run independent ops side by side."""
    import shutil
    import tempfile

    import keras
    import tensorflow as tf

    from vapm.config.model_registry import get_entry
    from vapm.config.seeding import set_global_seed
    from vapm.config.settings import load_settings
    from vapm.models.components.keras_fit import observing_fits
    from vapm.training.run import prepare_job

    entry = get_entry(name)
    settings = measurement_settings(load_settings(models=[name]), name, epochs)
    set_global_seed(settings.seed, tensorflow=True, threads=settings.compute.threads)
    if serial:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    logdir = logdir or tempfile.mkdtemp(prefix=f"vapm-profile-{name}-")
    shutil.rmtree(logdir, ignore_errors=True)
    totals: dict[str, float] = {}

    class LastEpochProfile(keras.callbacks.Callback):
        def __init__(self, phase: str):
            super().__init__()
            self.phase = phase

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == epochs - 1:
                tf.profiler.experimental.start(os.path.join(logdir, self.phase))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == epochs - 1:
                tf.profiler.experimental.stop()
                for op, seconds in op_times_from_trace(os.path.join(logdir, self.phase)).items():
                    totals[f"{self.phase}: {op}"] = totals.get(f"{self.phase}: {op}", 0.0) + seconds

    class Profiler:
        def fit_callback(self, model: Any, info: Any):
            return LastEpochProfile(info.phase)

        def predicted(self, *args: Any) -> None:
            pass

    job = prepare_job(entry, settings, None)
    with observing_fits(Profiler()):
        entry.load_trainer().train(job)
    return totals


# --------------------------------------------------------------------------- worker command line

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", help="write the JSON here (default: stdout)")
    sub = parser.add_subparsers(dest="command", required=True)
    peak = sub.add_parser("peak", parents=[common], help="GFLOP/s of a large fp32 matmul, several times")
    peak.add_argument("--size", type=int, default=2048)
    peak.add_argument("--repeats", type=int, default=7)
    model = sub.add_parser("model", parents=[common], help="time the epochs of a registered Keras model's trainer")
    model.add_argument("name")
    model.add_argument("--epochs", type=int, default=3)
    model.add_argument("--as-before", action="store_true", help="with Keras's own Adam, as before the speed work")
    prof = sub.add_parser("profile", parents=[common], help="seconds per TensorFlow op in the last epoch of each fit")
    prof.add_argument("name")
    prof.add_argument("--epochs", type=int, default=2)
    prof.add_argument("--top", type=int, default=25)
    prof.add_argument("--parallel", action="store_true", help="independent ops side by side, as in the stages")
    args = parser.parse_args(argv)

    from vapm.core.errors import run_stage

    with run_stage(f"roofline {args.command}"):
        if args.command == "peak":
            from vapm.config.seeding import set_global_seed
            from vapm.config.settings import load_settings

            threads = load_settings().compute.threads
            set_global_seed(0, tensorflow=True, threads=threads)
            rates = matmul_peak(args.size, args.repeats)
            result: dict[str, Any] = {"peak_gflops": rates["wall"], "peak_gflops_per_cpu_second": rates["cpu"],
                                      "size": args.size, "threads": threads}
        elif args.command == "model":
            result = measure_model(args.name, args.epochs, before=args.as_before)
        else:
            totals = profile_model(args.name, args.epochs, serial=not args.parallel)
            result = {"op_seconds": totals}
            for phase in sorted({k.split(":")[0] for k in totals}):
                subset = {k.split(": ", 1)[1]: v for k, v in totals.items() if k.startswith(phase + ":")}
                print(f"{args.name} {phase}: {sum(subset.values()):.2f} s in ops (last epoch)", file=sys.stderr)
                for what, seconds, share in summarise_op_times(subset, args.top):
                    print(f"  {seconds:8.3f} s {100 * share:5.1f} %  {what}", file=sys.stderr)
        result["load_average"] = list(os.getloadavg())
        text = json.dumps(result, indent=1, default=float)
        if args.out:
            with open(args.out, "w") as out:
                out.write(text + "\n")
        else:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
