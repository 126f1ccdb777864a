"""vision_anomaly as a registered model: a PatchCore bank from normal train images only, scores for every test image.

It reads the anomaly_data stage's grey images (data/features/anomaly_image: a normal class beside the defect classes,
its own class list), builds the bank from the train split's `normal_class` images (unset: the class with the most
train images), sets the threshold at `false_alarm_rate` on normal images the
bank was not built from, and evaluates on the test split: image AUROC and pAUC with bootstrap intervals (overall
and per defect class), false alarms among the normal test images and the detection rate of each defect class at
the threshold (components.anomaly_metrics, as acoustic_anomaly). The evaluation and the ROC points are saved beside
the model for the evaluate stage.
"""
from __future__ import annotations

import time

import numpy as np

from vapm.models.components.anomaly_metrics import anomaly_metrics, roc_rows
from vapm.models.components.data import TrainingError, train_test_only
from vapm.models.components.job import Trained, TrainingJob
from vapm.models.vision_anomaly.model import fit_patchcore
from vapm.models.vision_anomaly.settings import Params

__all__ = ["Params", "train"]


def train(job: TrainingJob) -> Trained:
    params: Params = job.params
    features = job.features
    if features.record.get("kind") != "image" or np.ndim(features.x) != 3:
        raise TrainingError(f"{job.name} takes grey images (data/features/anomaly_image), got "
                            f"{features.record.get('kind')}")
    if params.normal_class is not None and params.normal_class not in job.class_names:
        raise TrainingError(f"vision_anomaly.normal_class {params.normal_class!r} is not one of its input's classes "
                            f"{job.class_names}")
    split = train_test_only(features.splits)
    started = time.perf_counter()
    model = fit_patchcore(np.asarray(features.x), features.labels, features.splits, job.class_names,
                          settings=params, seed=job.seed)
    fitted = time.perf_counter()
    scores = model.score_images(np.asarray(features.x[split.test]))
    classes = np.asarray(job.class_names, dtype=object)[features.labels[split.test]].astype(str)
    evaluation = params.evaluation
    clean = anomaly_metrics(scores, classes, model.normal_class, model.threshold.value, max_fpr=evaluation.max_fpr,
                            n_resamples=evaluation.bootstrap_resamples, confidence=evaluation.confidence,
                            seed=job.seed, class_names=job.class_names,
                            target_false_alarm_rate=model.threshold.false_alarm_rate)
    print(f"{job.name}: PatchCore bank of {len(model.bank)} patches from {len(model.fit_rows)} "
          f"{model.normal_class!r} images, threshold {model.threshold.value:.4g} at a {params.false_alarm_rate:.0%} "
          f"false-alarm target; test AUC {clean['overall']['auc']:.3f}", flush=True)
    return Trained(model=model, split=split, test_scores=np.asarray(scores, dtype=np.float64), score_kind="anomaly",
                   details={"method": model.method, "normal_class": model.normal_class,
                            "threshold": model.threshold.as_dict(), "n_fit_images": int(len(model.fit_rows)),
                            "bank_size": int(len(model.bank)), "n_patches": model.info["n_patches"],
                            "grid": model.info["grid"], "weights": model.info["weights"]},
                   documents={"evaluation": {"method": model.method, "threshold": model.threshold.as_dict(),
                                             "clean": clean, "noise": {}},
                              "roc": roc_rows(scores, classes, model.normal_class, job.class_names), "noise": []},
                   metrics={"test_auc": clean["overall"]["auc"], "test_pauc": clean["overall"]["pauc"],
                            "test_false_alarm_rate": clean["false_alarm"]["rate"]},
                   seconds={"training": fitted - started, "evaluation": time.perf_counter() - fitted})
