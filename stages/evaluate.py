"""Stage evaluate: test-set scores, details and plots of every model in the registry (models.yaml).

Reads models/<model>/ and writes metrics/headline.json, metrics/scores/, metrics/details/ and metrics/plots/ (see
vapm.evaluation.evaluate).
"""
from __future__ import annotations

import json
from pathlib import Path

from vapm.core.errors import run_stage


def main() -> None:
    from vapm.config import paths
    from vapm.evaluation.evaluate import (
        evaluate_classifier,
        evaluate_detector,
        open_live,
        read_record,
        save_unfamiliar_plots,
        write_headline,
    )
    from vapm.serving.shifted_inputs import FAMILIAR, evaluate_shifted_inputs
    from vapm.evaluation.metrics import EvaluationError
    from vapm.config.model_registry import load_registry
    from vapm.config.settings import load_settings

    settings = load_settings(models=())
    registry = load_registry()
    missing = [f"{paths.model_dir(name)} (stage train@{name})" for name in registry
               if not paths.model_dir(name).is_dir()]
    if missing:
        raise EvaluationError(f"model folders missing: {', '.join(missing)}; run those stages first (dvc repro)")
    live = open_live(paths.METRICS)
    scores, shares = {}, {}
    for name, entry in registry.items():
        try:
            if entry.task == "detector":  # its own classes (vision_anomaly's input has a normal class beside the defects)
                classes = read_record(paths.model_dir(name))["classes"]
                summary = evaluate_detector(name, paths.model_dir(name), classes, paths.METRICS, live,
                                            Path(entry.input) if entry.modality == "vision" else None)
            else:
                classes = settings.classes(entry.modality) or read_record(paths.model_dir(name))["classes"]
                # The answers on the line (exported model, input checks, flag) to the test split and shifted copies
                shares[name] = evaluate_shifted_inputs(paths.model_dir(name), settings.seed)
                summary = evaluate_classifier(name, paths.model_dir(name), classes, paths.METRICS, live, shares[name])
        except EvaluationError as err:
            raise EvaluationError(f"{name}: {err}") from err
        scores[name] = json.loads((paths.METRICS / "scores" / f"{name}.json").read_text())
        if entry.task == "detector":
            pixels = f", pixel AUROC {summary['pixel_auroc']:.3f}, AUPRO {summary['aupro']:.3f}" \
                if "aupro" in summary else ""
            print(f"{name}: AUC {summary['auc']:.3f} (95% CI {summary['auc_lo']:.3f}-{summary['auc_hi']:.3f}), "
                  f"pAUC {summary['pauc']:.3f}, false alarms {summary['far']:.1%}, n={summary['n']}{pixels}")
            continue
        low, high = summary["accuracy_ci95_low"], summary["accuracy_ci95_high"]
        print(f"{name}: accuracy {summary['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), "
              f"macro-F1 {summary['macro_f1']:.3f}, balanced accuracy {summary['balanced_accuracy']:.3f}, "
              f"majority baseline {summary['majority_baseline']:.3f} ({summary['majority_class']}, the "
              f"{summary['majority_from']} split's most frequent class), n={summary['n_test']}")
        if "ece" in summary:
            print(f"{name}: calibration error (ECE) {summary['ece_raw']:.3f} -> {summary['ece']:.3f} with the "
                  "temperature", flush=True)
        if "unfl_test" in summary:
            worst = min((kind for kind in shares[name] if kind != FAMILIAR),
                        key=lambda kind: shares[name][kind]["flagged"])
            print(f"{name}: unfamiliar-input flag on {summary['unfl_test']:.1%} of the test split; shifted inputs "
                  f"flagged at least {summary['unfl_min']:.1%} (least: {worst})", flush=True)
    save_unfamiliar_plots({name: found for name, found in shares.items() if found},
                          {name: entry.modality for name, entry in registry.items()}, paths.PLOTS)
    write_headline(paths.METRICS, scores)


if __name__ == "__main__":
    with run_stage("evaluate"):
        main()
