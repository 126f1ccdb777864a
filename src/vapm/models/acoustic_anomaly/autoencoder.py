"""`AutoencoderDetector` (method `autoencoder`): a dense autoencoder that learns to reconstruct windows of
consecutive log-mel frames of normal sound; a clip's score is its mean squared reconstruction error (see
`detectors` for why). Its Keras models are built once per shape and reset between fits."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from vapm.config.seeding import set_global_seed
from vapm.models.acoustic_anomaly.detectors import AnomalyModelError, Detector, read_saved, standardiser
from vapm.models.acoustic_anomaly.features import frame_windows
from vapm.models.acoustic_anomaly.settings import AutoencoderSettings

KERAS_FILE = "autoencoder.keras"
ONNX_FILE = "autoencoder.onnx"  # written and checked by the artefact adapter (vapm.artefacts.anomaly)


# Windows put through the autoencoder at once when scoring: bounds memory, not results.
_SCORE_BATCH_WINDOWS = 8192


def build_autoencoder(input_dim: int, settings: AutoencoderSettings):
    """Dense autoencoder: [Dense, BatchNorm, ReLU] per hidden layer, the bottleneck, the mirror, a linear output."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(input_dim,), name="window")
    x = inputs
    widths = [*settings.hidden_units, settings.bottleneck_units, *reversed(settings.hidden_units)]
    for i, units in enumerate(widths, start=1):
        x = layers.Dense(units, name=f"dense{i}")(x)
        x = layers.BatchNormalization(name=f"batchnorm{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    outputs = layers.Dense(input_dim, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="acoustic_anomaly_autoencoder")


class _AutoencoderTrainers:
    """Compiled autoencoders, reset to their initial state before each fit instead of built anew.

    Building and compiling a Keras model and tracing its training step cost ~4 CPU seconds, more than
    training this small network for 30 epochs; cross-validating the threshold fits k + 1 models of one
    shape. Each trainer keeps the weights it was initialised with (under `set_global_seed(seed)`) and
    its optimizer's initial variables (Adam: step count, moments), and `reset` restores both, so a
    reused trainer starts exactly where a new one would. A few shapes are kept (the watched bands, and so
    the input size, can differ between folds).
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._entries: dict[tuple, tuple[Any, list[np.ndarray], list[np.ndarray]]] = {}

    def reset(self, input_dim: int, settings: AutoencoderSettings, seed: int):
        import keras

        key = (input_dim, settings, seed)
        if key not in self._entries:
            set_global_seed(seed)
            model = build_autoencoder(input_dim, settings)
            # No XLA: Keras 3's jit_compile="auto" compiles with XLA, which cost ~5 s more per model on 2
            # busy CPU cores than it saves on this small network.
            model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mse", jit_compile=False)
            model.optimizer.build(model.trainable_variables)
            if len(self._entries) >= self.capacity:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (model, [np.array(w) for w in model.get_weights()],
                                  [np.array(v) for v in model.optimizer.variables])
        model, weights, optimizer_state = self._entries[key]
        model.set_weights(weights)
        for variable, value in zip(model.optimizer.variables, optimizer_state):
            variable.assign(value)
        return model


_TRAINERS = _AutoencoderTrainers()


class AutoencoderDetector(Detector):
    method = "autoencoder"

    def __init__(self, settings: AutoencoderSettings = AutoencoderSettings(), seed: int = 42,
                 band_floor_db: float | None = 30.0):
        super().__init__(band_floor_db)
        self.settings = settings
        self.seed = int(seed)
        self.final_loss: float | None = None

    def _windows(self, log_mel: np.ndarray) -> np.ndarray:
        """Standardised windows (N, W, context * bands): every band with the normal clips' mean and scale."""
        windows = frame_windows(log_mel, self.settings.context_frames)
        # Windows are flattened frame by frame, so the band pattern repeats context_frames times.
        mean = np.tile(self.band_mean, self.settings.context_frames).astype(np.float32)
        scale = np.tile(self.band_scale, self.settings.context_frames).astype(np.float32)
        return (windows - mean) / scale

    def _fit_normal(self, normal: np.ndarray) -> None:
        import keras

        frames = np.swapaxes(normal, 1, 2).reshape(-1, normal.shape[1]).astype(np.float64)
        self.band_mean, self.band_scale = standardiser(frames)
        windows = self._windows(normal)
        x = windows.reshape(-1, windows.shape[2])
        trainer = _TRAINERS.reset(x.shape[1], self.settings, self.seed)
        set_global_seed(self.seed)  # the same random state before every fit: the shuffles do not depend on history
        history = trainer.fit(x, x, epochs=self.settings.epochs, batch_size=self.settings.batch_size,
                              shuffle=True, verbose=0)
        self.final_loss = float(history.history["loss"][-1])
        self.model = keras.models.clone_model(trainer)  # the trainer is reset by the next fit: keep a copy
        self.model.set_weights(trainer.get_weights())

    def _score(self, log_mel: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error over each clip's windows (standardised units)."""
        windows = self._windows(log_mel)
        n_clips, n_windows, dim = windows.shape
        flat = windows.reshape(-1, dim)
        errors = np.empty(len(flat), dtype=np.float64)
        for start in range(0, len(flat), _SCORE_BATCH_WINDOWS):
            batch = flat[start:start + _SCORE_BATCH_WINDOWS]
            reconstruction = np.asarray(self.model(batch, training=False))
            errors[start:start + len(batch)] = np.mean((reconstruction - batch) ** 2, axis=1)
        return errors.reshape(n_clips, n_windows).mean(axis=1)

    def describe(self) -> dict[str, Any]:
        settings = self.settings
        return {"context_frames": settings.context_frames, "hidden_units": list(settings.hidden_units),
                "bottleneck_units": settings.bottleneck_units, "epochs": settings.epochs,
                "batch_size": settings.batch_size, "learning_rate": settings.learning_rate, "seed": self.seed,
                "final_loss": self.final_loss}

    def save(self, directory: str | Path) -> Path:
        """detector.json, the bands and their standardiser (.npz) and the Keras model (.keras; Keras stamps its
        save date into that file's metadata, so its bytes differ between saves even when the weights are equal)."""
        directory = Path(directory)
        self._save(directory, {"band_mean": self.band_mean, "band_scale": self.band_scale})
        self.model.save(directory / KERAS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, network_loader: Callable[[Path], Any] | None = None) -> "AutoencoderDetector":
        """The saved detector; its network through `network_loader(path of autoencoder.onnx)` when given (a callable
        that maps a batch of windows to their reconstructions, without Keras), else the Keras model."""
        directory = Path(directory)
        description, arrays = read_saved(directory, cls.method)
        settings = AutoencoderSettings(
            context_frames=int(description["context_frames"]), hidden_units=tuple(description["hidden_units"]),
            bottleneck_units=int(description["bottleneck_units"]), epochs=int(description["epochs"]),
            batch_size=int(description["batch_size"]), learning_rate=float(description["learning_rate"]))
        detector = cls(settings, int(description["seed"]), description["band_floor_db"])
        detector._restore(description, arrays)
        detector.band_mean, detector.band_scale = arrays["band_mean"], arrays["band_scale"]
        if network_loader is not None and (directory / ONNX_FILE).is_file():
            detector.model = network_loader(directory / ONNX_FILE)
        elif not (directory / KERAS_FILE).is_file():
            raise AnomalyModelError(f"{directory / KERAS_FILE} not found: retrain the acoustic_anomaly model")
        else:
            import keras

            detector.model = keras.models.load_model(directory / KERAS_FILE, compile=False)
        detector.final_loss = description.get("final_loss")
        return detector
