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
import json
import os
import re
import sys
import time
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- profiles: where the time goes


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
            from vapm.bench.fit_timing import measure_model  # it imports this module

            result = measure_model(args.name, args.epochs, before=args.as_before)
        else:
            from vapm.bench.profile import profile_model, summarise_op_times  # it imports this module

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
