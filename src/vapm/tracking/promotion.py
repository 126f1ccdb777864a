"""The champion/challenger policy of MLflow's Model Registry: each trained model is registered as
`vapm-<model>`, and the `champion` alias moves to a new version only when it is scored on the same test set and
is not worse than the champion by more than `mlflow.champion_tolerance`; otherwise it is the `challenger`."""
from __future__ import annotations

CHAMPION, CHALLENGER = "champion", "challenger"


def registered_name(model: str) -> str:
    return f"vapm-{model}"


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

