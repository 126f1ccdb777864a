"""`python -m vapm.bench.class_weight`: what `train.class_weight: balanced` buys on a 95/5 dataset.

Two overlapping Gaussian classes (95 % and 5 %) in 16 dimensions; the same small Keras classifier (fitted with
vapm's fit_classifier) and the SVM pipeline (vapm.models.acoustic_svm) trained with class_weight none and
balanced, over several seeds; balanced accuracy and accuracy on a stratified test set. A benchmark, not a test:
its numbers depend on the data it draws; docs/benchmarks/class-weight.json keeps a run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CLASS_SHARES = (0.95, 0.05)


def imbalanced_set(n: int, dims: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) >= CLASS_SHARES[0]).astype(np.int64)
    x = rng.normal(0, 1, (n, dims)).astype(np.float32)
    x[y == 1] += separation / np.sqrt(dims)
    return x, y


def keras_scores(x_fit, y_fit, x_test, class_weight: str, seed: int, epochs: int) -> np.ndarray:
    import keras

    from vapm.config.seeding import set_global_seed
    from vapm.models.components.keras_fit import compile_classifier, fit_classifier, predict_in_batches

    set_global_seed(seed, tensorflow=True, threads=2)
    model = keras.Sequential([keras.Input((x_fit.shape[1],)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    compile_classifier(model, 0.01)
    fit_classifier(model, (x_fit, y_fit), None, epochs=epochs, batch_size=64, seed=seed, phase="train",
                   class_weight=class_weight)
    return predict_in_batches(model, x_test).argmax(axis=1)


def svm_scores(x_fit, y_fit, x_test, class_weight: str, seed: int) -> np.ndarray:
    from vapm.models.acoustic_svm import build_pipeline

    return build_pipeline(1.0, 20000, seed, class_weight).fit(x_fit, y_fit).predict(x_test)


def run(n: int = 2000, dims: int = 16, separation: float = 2.5, seeds: int = 3, epochs: int = 20) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import train_test_split

    rows = []
    for seed in range(seeds):
        x, y = imbalanced_set(n, dims, separation, seed)
        x_fit, x_test, y_fit, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
        for model in ("keras", "svm"):
            for class_weight in ("none", "balanced"):
                predicted = (keras_scores(x_fit, y_fit, x_test, class_weight, seed, epochs) if model == "keras"
                             else svm_scores(x_fit, y_fit, x_test, class_weight, seed))
                rows.append({"seed": seed, "model": model, "class_weight": class_weight,
                             "balanced_accuracy": round(float(balanced_accuracy_score(y_test, predicted)), 4),
                             "accuracy": round(float(accuracy_score(y_test, predicted)), 4)})
    summary = {}
    for model in ("keras", "svm"):
        for class_weight in ("none", "balanced"):
            chosen = [row for row in rows if row["model"] == model and row["class_weight"] == class_weight]
            summary[f"{model}/{class_weight}"] = {
                key: round(float(np.mean([row[key] for row in chosen])), 4) for key in ("balanced_accuracy", "accuracy")}
    return {"setup": {"n": n, "dims": dims, "separation": separation, "shares": CLASS_SHARES, "seeds": seeds,
                      "epochs": epochs, "test_fraction": 0.3}, "runs": rows, "mean": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vapm.bench.class_weight", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    result = run(seeds=args.seeds, epochs=args.epochs)
    print(f"{'model / class_weight':<22} {'balanced acc.':>13} {'accuracy':>9}")
    for name, values in result["mean"].items():
        print(f"{name:<22} {values['balanced_accuracy']:>13.3f} {values['accuracy']:>9.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
