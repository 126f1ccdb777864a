"""The served MLflow model: a pyfunc that takes raw files (what training logs, what `mlflow models serve` runs).

Every training run logs its model folder (models/<name>/) as a pyfunc model that runs exactly vapm's
decoding and feature steps (vapm.serving.loading) before the network, and registers it as `vapm-<name>`:

    mlflow models serve -m models:/vapm-acoustic_cnn@champion --env-manager local -h 127.0.0.1 -p 5001
    curl -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"file": "clip.wav", "data": "<base64 of the file>"}]}'

Answer: {"predictions": [{"file", "model", "version", "class", "probability", "probabilities"}]} (a linear
SVM gives "decision_scores" instead, labelled as such; a detector "status", "score" and "threshold"). A file the
model cannot take gets HTTP 400 with one line naming it; the server goes on serving.

A visual anomaly detector (vision_anomaly) also returns each image's anomaly map, on request: add
`"params": {"anomaly_map": true}` to the body, and each answer carries "anomaly_map", the map at the image's side as
rows of scores (4 decimals).
"""
from __future__ import annotations

import base64
import binascii
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vapm.core.errors import VapmError

MODEL_FOLDER_ARTIFACT = "model_folder"
REQUEST_COLUMNS = ("file", "data")
# What the served model needs besides Python (pinned to this environment; `--env-manager local` uses it as is).
# It answers through ONNX Runtime (networks, PatchCore's extractor) and NumPy (the SVM, the statistical detectors, the
# memory bank): no TensorFlow or Keras.
# scikit-learn and skops load an SVM folder saved before its NumPy export existed.
REQUIREMENTS = ("numpy", "pandas", "pydantic", "pillow", "soundfile", "soxr", "PyWavelets", "onnxruntime",
                "scipy", "scikit-learn", "skops", "mlflow")  # scipy: a visual anomaly detector's maps
MAP_PARAM = "anomaly_map"
MAP_DECIMALS = 4


class ServingError(VapmError, ValueError):
    """A request the served model cannot answer, or a registry operation that cannot be done."""


def encode_files(paths: list[str | Path]) -> dict[str, Any]:
    """The JSON body of a request for these files (what a client sends to /invocations)."""
    return {"dataframe_records": [{"file": Path(path).name, "data": base64.b64encode(Path(path).read_bytes()).decode()}
                                  for path in paths]}


def decode_request(frame) -> list[tuple[str, bytes]]:
    """(file name, bytes) per request row; a malformed row is a ServingError naming it."""
    missing = [column for column in REQUEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ServingError(f"the request lacks {missing}: send rows of {{\"file\": name, \"data\": base64}}")
    files = []
    for row, (name, data) in enumerate(zip(frame["file"], frame["data"])):
        name = str(name)
        try:
            files.append((name, base64.b64decode(str(data), validate=True)))
        except (binascii.Error, ValueError):
            raise ServingError(f"{name} (row {row}): data is not base64") from None
    return files


def model_version(model_dir: Path) -> str | None:
    """The registry version of the logged model this folder belongs to (looked up by its run id)."""
    try:
        import yaml
        from mlflow.tracking import MlflowClient

        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        run_id = mlmodel.get("run_id")
        if not run_id:
            return None
        versions = MlflowClient().search_model_versions(f"run_id = '{run_id}'")
        return str(max(int(v.version) for v in versions)) if versions else None
    except Exception:  # noqa: BLE001 - a served model works without a reachable registry; it then says None
        return None


def _python_model_class():
    import mlflow.pyfunc

    class RawFileModel(mlflow.pyfunc.PythonModel):
        """Raw file bytes in, vapm's prediction out (vapm.serving.loading does the decoding and features)."""

        def load_context(self, context) -> None:
            from vapm.serving.loading import load_model

            folder = Path(context.artifacts[MODEL_FOLDER_ARTIFACT])
            # runtime None: the light one where the model has it (all of vapm's now), else native
            self.model = load_model(folder, version=model_version(folder.parent.parent), runtime=None)

        def predict(self, context, model_input, params=None):
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            maps = bool((params or {}).get(MAP_PARAM, False))
            try:
                if maps and not self.model.gives_maps:
                    raise ServingError(f"{self.model.name} gives no anomaly map: {MAP_PARAM} is for a visual "
                                       "anomaly detector")
                results = self.model.predict_files(decode_request(model_input), maps=maps)
            except ServingError as err:
                raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
            errors = [result["error"] for result in results if "error" in result]
            if errors:
                raise MlflowException("; ".join(errors), error_code=INVALID_PARAMETER_VALUE)
            for result in results:
                result.pop("anomaly_image", None)  # the client sent the image
                if MAP_PARAM in result:
                    result[MAP_PARAM] = np.round(result[MAP_PARAM], MAP_DECIMALS).tolist()
            return results

    return RawFileModel


def requirements() -> list[str]:
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pinned


# What a served model imports of vapm (tests/project/test_layers.py checks it against the import graph): the
# logged model carries these and nothing else (no training, tracking server, benchmarks or command line).
SERVED_CODE = ("__init__.py", "core", "config", "data/__init__.py", "data/ingest", "data/features",
               "data/image_polarity.py", "data/input_checks.py", "data/shifts.py", "models", "artefacts", "serving")


def copy_served_code(dest: Path) -> Path:
    """dest/vapm: the part of the vapm package that the served model needs (SERVED_CODE)."""
    import shutil

    import vapm

    source, target = Path(vapm.__file__).parent, Path(dest) / "vapm"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in SERVED_CODE:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, ignore=ignore)
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)
    return target


def log_raw_file_model(model_dir: Path):
    """Log models/<name>/ in the active run as a pyfunc that takes raw files; returns MLflow's ModelInfo."""
    import tempfile

    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    example = pd.DataFrame({"file": ["example.wav"], "data": ["UklGRg=="]})
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="vapm-served-code-") as scratch:
        # MLflow suggests type hints and an input example; the signature says what a request holds, and an
        # example would have to be a real image or recording of the model's kind.
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        return mlflow.pyfunc.log_model(
            name="model", python_model=_python_model_class()(), artifacts={MODEL_FOLDER_ARTIFACT: str(model_dir)},
            code_paths=[str(copy_served_code(Path(scratch)))], pip_requirements=requirements(),
            signature=infer_signature(example, params={MAP_PARAM: False}))
