"""The NEU anomaly benchmark's own parts on a tiny synthetic set: one-vs-rest rows, labels, summary, table."""
from __future__ import annotations

import numpy as np


def stripes(rng: np.random.Generator, vertical: bool, size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi)
    image = 110 + 60 * np.sin((x if vertical else y) / 2.0 + phase) + rng.normal(0, 4, (size, size))
    return np.clip(image, 0, 255).astype(np.float32)


def test_one_vs_rest_rows_summary_and_table():
    from vapm.bench.anomaly_neu import detector_params, evaluate_class, markdown_table, one_vs_rest_split, summarize

    rng = np.random.default_rng(0)
    # class 0: vertical stripes, class 1: horizontal; 8 train + 3 test each
    labels = np.array([0] * 8 + [1] * 8 + [0] * 3 + [1] * 3)
    splits = np.array(["train"] * 16 + ["test"] * 6)
    images = np.stack([stripes(rng, vertical=label == 0) for label in labels])
    names = ["vertical", "horizontal"]

    train, test, test_classes = one_vs_rest_split(labels, splits, names, "horizontal")
    assert train.tolist() == list(range(8, 16)) and test.tolist() == list(range(16, 22))
    assert test_classes.tolist() == ["vertical"] * 3 + ["horizontal"] * 3

    params = detector_params(32, threshold_method="holdout", validation_fraction=0.25,
                             feature_dim=16, max_bank_size=50)
    assert params.input_size == 32 and params.n_neighbors == 9  # the rest is params.yaml's section
    params = params.model_copy(update={"n_neighbors": 3, "evaluation": params.evaluation.model_copy(
        update={"bootstrap_resamples": 20})})
    rows, cached = [], None
    for normal in names:  # the second class scores the first's cached test patches, as the benchmark does
        row, model = evaluate_class(images, labels, splits, names, normal, params, seed=1, test_patches=cached)
        assert row["normal_class"] == normal and row["n_test_normal"] == 3 and row["n_test_abnormal"] == 3
        assert row["n_train_normal"] == 8 and row["n_fit_images"] == 6  # 2 of the 8 held out for the threshold
        assert set(model.fit_rows.tolist()) < set(np.flatnonzero((splits == "train") & (labels == names.index(normal))))
        assert row["bank_size"] == len(model.bank) <= 50 and 0 <= row["auroc"] <= 1
        assert list(row["auroc_per_defect"]) == [n for n in names if n != normal]
        if cached is None:
            cached = model.patches(images[test])
        else:  # the same (ImageNet) extractor: the cached patches give the scores the images give
            scores = model.score_patches(cached)[0]
            assert scores.tobytes() == model.score_images(images[test]).tobytes()
        rows.append(row)
    summary = summarize(rows)
    assert summary["classes"] == 2 and summary["mean_auroc"] == np.mean([r["auroc"] for r in rows])
    table = markdown_table({"one_vs_rest": rows})
    assert table.count("\n| vertical |") == 1 and "| horizontal |" in table
    assert f"**{summary['mean_auroc']:.3f}**" in table and "pAUC at FPR <= 0.1" in table


def test_latency_is_measured_in_fresh_processes_for_both_runtimes():
    from vapm.bench.anomaly_neu import detector_params, markdown_table, measure_latency
    from vapm.models.vision_anomaly import fit_patchcore

    rng = np.random.default_rng(3)
    images = np.stack([stripes(rng, vertical=True) for _ in range(8)])
    params = detector_params(32, threshold_method="holdout", validation_fraction=0.25, feature_dim=16,
                             max_bank_size=50)
    model = fit_patchcore(images, np.zeros(8, int), np.array(["train"] * 8), ["ok"], settings=params.model_copy(
        update={"normal_class": "ok"}), seed=1)
    measured = measure_latency(model, images[:3], calls=2, warmup=1, threads=1, seed=1)
    assert set(measured) == {"onnx", "keras"} and measured["onnx"]["runtime"] == "onnx"
    for latency in measured.values():
        assert latency["total"]["n"] == 2 and latency["total"]["median_ms"] > 0 and latency["image_shape"] == [32, 32]
    result = {"latency": {**measured["onnx"]}, "latency_keras": {**measured["keras"]}}
    table = markdown_table(result)
    assert "runtime onnx (the default)" in table and "runtime keras (--runtime native)" in table
