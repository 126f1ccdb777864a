"""The models a monitor scores with: loaded once each, warmed up on a synthetic file of their kind so that the
first real file is not slowed by TensorFlow's first call, and the file suffixes each takes."""
from __future__ import annotations

from typing import Any


def warm_up(model: Any) -> None:
    """Score one synthetic file, so the first real one does not pay for first-call costs (lazy imports, JIT)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    if model.input.modality == "vision":
        from PIL import Image

        Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(buffer, format="PNG")
        model.predict_files([("warm-up.png", buffer.getvalue())], maps=getattr(model, "gives_maps", False))
        return
    import soundfile

    audio = model.record["input"]["audio"]
    rate = int(round(audio["sample_rate"]))
    samples = np.random.default_rng(0).normal(0, 0.1, int(audio["clip_samples"] * rate / audio["sample_rate"]))
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    model.predict_files([("warm-up.wav", buffer.getvalue())])


def model_suffixes(model: Any) -> tuple[str, ...]:
    from vapm.data.features.records import raw_suffixes

    return raw_suffixes(model.input)


def load_models(model_dirs: list[str], runtime: str | None = "onnx") -> list[Any]:
    """Each model loaded once (runtime: see vapm.serving.loading.load_model), and warmed up on a synthetic file."""
    from vapm.serving.loading import load_model

    models = [load_model(folder, runtime=runtime) for folder in model_dirs]
    for model in models:
        warm_up(model)
    return models
