"""Every epoch and batched prediction of a registered Keras model's real trainer, timed (wall and CPU seconds)
through the fit loop's hooks (`keras_fit.observing_fits`, `keras_fit.fitting_with`), with the FLOPs of what was
fitted."""
from __future__ import annotations
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from vapm.bench.roofline import ModelFlops, RooflineError, model_flops


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
