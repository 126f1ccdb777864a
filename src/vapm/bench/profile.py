"""Where a training epoch's time goes: TensorFlow's profiler trace of a registered Keras model, summed per op
(`python -m vapm.bench.roofline profile <model>`)."""
from __future__ import annotations

import os
import re
from typing import Any

from vapm.bench.roofline import RooflineError
from vapm.bench.fit_timing import measurement_settings

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
