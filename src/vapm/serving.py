"""Serving trained models: an MLflow pyfunc that takes raw files, and the Model Registry's champion alias.

Every training run logs its model folder (models/<name>/) as a pyfunc model that runs exactly vapm's
decoding and feature steps (vapm.inference) before the network, and registers it as `vapm-<name>`:

    mlflow models serve -m models:/vapm-acoustic_cnn@champion --env-manager local -h 127.0.0.1 -p 5001
    curl -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"dataframe_records": [{"file": "clip.wav", "data": "<base64 of the file>"}]}'

Answer: {"predictions": [{"file", "model", "version", "class", "probability", "probabilities"}]} (a linear
SVM gives "decision_scores" instead, labelled as such). A file the model cannot take gets HTTP 400 with one
line naming it; the server goes on serving.
"""
from __future__ import annotations

import base64
import binascii
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from vapm.errors import VapmError

MODEL_FOLDER_ARTIFACT = "model_folder"
REQUEST_COLUMNS = ("file", "data")
CHAMPION, CHALLENGER = "champion", "challenger"
# What the served model needs besides Python (pinned to this environment; `--env-manager local` uses it as is).
REQUIREMENTS = ("numpy", "pandas", "pydantic", "pillow", "soundfile", "soxr", "librosa", "PyWavelets", "scikit-learn",
                "skops", "keras", "tensorflow-cpu", "mlflow")


class ServingError(VapmError, ValueError):
    """A request the served model cannot answer, or a registry operation that cannot be done."""


def registered_name(model: str) -> str:
    return f"vapm-{model}"


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
        """Raw file bytes in, vapm's prediction out (vapm.inference does the decoding and features)."""

        def load_context(self, context) -> None:
            from vapm.inference import load_model

            folder = Path(context.artifacts[MODEL_FOLDER_ARTIFACT])
            self.model = load_model(folder, version=model_version(folder.parent.parent))

        def predict(self, context, model_input, params=None):
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            try:
                results = self.model.predict_files(decode_request(model_input))
            except ServingError as err:
                raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
            errors = [result["error"] for result in results if "error" in result]
            if errors:
                raise MlflowException("; ".join(errors), error_code=INVALID_PARAMETER_VALUE)
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


def log_raw_file_model(model_dir: Path):
    """Log models/<name>/ in the active run as a pyfunc that takes raw files; returns MLflow's ModelInfo."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    import vapm

    example = pd.DataFrame({"file": ["example.wav"], "data": ["UklGRg=="]})
    with warnings.catch_warnings():
        # MLflow suggests type hints and an input example; the signature says what a request holds, and an
        # example would have to be a real image or recording of the model's kind.
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        return mlflow.pyfunc.log_model(
            name="model", python_model=_python_model_class()(), artifacts={MODEL_FOLDER_ARTIFACT: str(model_dir)},
            code_paths=[str(Path(vapm.__file__).parent)], pip_requirements=requirements(),
            signature=infer_signature(example))


def register_and_promote(model_info, model: str, accuracy: float, manifest_sha256: str,
                         tolerance: float) -> tuple[str, str, str]:
    """Register the logged model as `vapm-<model>` and move `champion` to it, or mark it `challenger`.

    The champion moves when the new version is scored on the same test set (same data manifest) and its test
    score (accuracy for a classifier, AUC for a detector) is not below the champion's by more than
    `tolerance`. Returns (version, alias, why).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name = registered_name(model)
    client = MlflowClient()
    version = mlflow.register_model(model_info.model_uri, name).version
    for key, value in (("test_accuracy", f"{accuracy:.6f}"), ("data_manifest_sha256", manifest_sha256)):
        client.set_model_version_tag(name, version, key, value)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is None:
        alias, why = CHAMPION, "the first registered version"
    else:
        champion_accuracy = float(champion.tags.get("test_accuracy", "nan"))
        if champion.tags.get("data_manifest_sha256") != manifest_sha256:
            alias, why = CHALLENGER, (f"scored on another test set than champion version {champion.version} (data "
                                      "manifests differ): compare them yourself, then move the alias with "
                                      f"MlflowClient().set_registered_model_alias('{name}', 'champion', {version})")
        elif accuracy >= champion_accuracy - tolerance:
            alias, why = CHAMPION, (f"test accuracy {accuracy:.4f} >= champion version {champion.version}'s "
                                    f"{champion_accuracy:.4f} - tolerance {tolerance:g}")
        else:
            alias, why = CHALLENGER, (f"test accuracy {accuracy:.4f} is below champion version {champion.version}'s "
                                      f"{champion_accuracy:.4f} by more than the tolerance {tolerance:g} "
                                      "(mlflow.champion_tolerance)")
    client.set_registered_model_alias(name, alias, version)
    return str(version), alias, why


def describe_promotion(model: str, version: str, alias: str, why: str) -> str:
    return f"{registered_name(model)} version {version} is the {alias}: {why}"

