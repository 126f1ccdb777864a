"""The champion/challenger policy of MLflow's Model Registry: each trained model is registered as
`vapm-<model>`, and the `champion` alias moves to a new version only when it is scored on the same test set, by
the same metric (`mlflow.champion_metric` for a classifier, AUC for a detector), and is not worse than the
champion by more than `mlflow.champion_tolerance`; otherwise it is the `challenger`."""
from __future__ import annotations

import math
from typing import Mapping

CHAMPION, CHALLENGER = "champion", "challenger"
CLASSIFIER_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # mlflow.champion_metric
DETECTOR_METRIC = "auc"
# Model-version tags: the compared metric's name and value. Versions registered before champion_metric existed
# carry only `test_accuracy` (a detector's AUC, for a detector): they count as scored by accuracy (AUC).
METRIC_TAG, SCORE_TAG, LEGACY_SCORE_TAG = "champion_metric", "champion_score", "test_accuracy"


def registered_name(model: str) -> str:
    return f"vapm-{model}"


def champion_score(tags: Mapping[str, str], metric: str) -> tuple[str, float]:
    """(metric, score) a registered version was compared by, read from its tags (older versions: see LEGACY)."""
    if METRIC_TAG in tags:
        return tags[METRIC_TAG], float(tags.get(SCORE_TAG, "nan"))
    legacy = DETECTOR_METRIC if metric == DETECTOR_METRIC else "accuracy"
    return legacy, float(tags.get(LEGACY_SCORE_TAG, "nan"))


def register_and_promote(model_info, model: str, score: float, manifest_sha256: str, tolerance: float,
                         metric: str = "accuracy", tags: Mapping[str, float] | None = None) -> tuple[str, str, str]:
    """Register the logged model as `vapm-<model>` and move `champion` to it, or mark it `challenger`.

    The champion moves when the new version is scored on the same test set (same data manifest), by the same
    `metric` (a classifier: accuracy, balanced_accuracy or macro_f1 as mlflow.champion_metric says; a detector:
    auc), and its test `score` is not below the champion's by more than `tolerance`. The version is tagged with
    champion_metric, champion_score, data_manifest_sha256 and `tags` (e.g. test_accuracy). Returns
    (version, alias, why).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if metric not in (*CLASSIFIER_METRICS, DETECTOR_METRIC):
        raise ValueError(f"champion metric must be one of {', '.join((*CLASSIFIER_METRICS, DETECTOR_METRIC))}, "
                         f"got {metric!r}")
    if not math.isfinite(score):
        raise ValueError(f"test {metric} {score} is not a finite number")
    name = registered_name(model)
    client = MlflowClient()
    version = mlflow.register_model(model_info.model_uri, name).version
    version_tags = {key: f"{value:.6f}" for key, value in (tags or {}).items()}
    if metric == "accuracy":
        version_tags.setdefault(LEGACY_SCORE_TAG, f"{score:.6f}")
    version_tags.update({METRIC_TAG: metric, SCORE_TAG: f"{score:.6f}", "data_manifest_sha256": manifest_sha256})
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    move_by_hand = f"MlflowClient().set_registered_model_alias('{name}', 'champion', {version})"
    if champion is None:
        alias, why = CHAMPION, "the first registered version"
    else:
        champion_metric, champion_value = champion_score(champion.tags, metric)
        if champion.tags.get("data_manifest_sha256") != manifest_sha256:
            alias, why = CHALLENGER, (f"scored on another test set than champion version {champion.version} (data "
                                      "manifests differ): compare them yourself, then move the alias with "
                                      f"{move_by_hand}")
        elif champion_metric != metric:
            alias, why = CHALLENGER, (f"scored by test {metric} but champion version {champion.version} by test "
                                      f"{champion_metric} (mlflow.champion_metric changed): compare them yourself, "
                                      f"then move the alias with {move_by_hand}")
        elif score >= champion_value - tolerance:
            alias, why = CHAMPION, (f"test {metric} {score:.4f} >= champion version {champion.version}'s "
                                    f"{champion_value:.4f} - tolerance {tolerance:g}")
        else:
            alias, why = CHALLENGER, (f"test {metric} {score:.4f} is below champion version {champion.version}'s "
                                      f"{champion_value:.4f} by more than the tolerance {tolerance:g} "
                                      "(mlflow.champion_tolerance)")
    client.set_registered_model_alias(name, alias, version)
    return str(version), alias, why


def describe_promotion(model: str, version: str, alias: str, why: str) -> str:
    return f"{registered_name(model)} version {version} is the {alias}: {why}"
