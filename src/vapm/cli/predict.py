"""Classify new images or recordings with a trained model folder.

    vapm predict models/vision_scratch strip_0412.jpg [more files ...]
    vapm predict models/acoustic_cnn recording.wav --json

Each file goes through exactly the steps the training data went through (ingest's decoding and
validation, then featurize's resizing or feature extraction), with the settings saved in the model's
record.json at training time, not today's params.yaml. The model is loaded once for all the files; a file
that cannot be used gets its own error line and the others are still classified (exit status 1 if any failed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vapm.core.errors import VapmError, one_line


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['error']}"
    if "status" in result:
        return f"{result['file']}: {result['status']} (score {result['score']:.4g}, threshold {result['threshold']:.4g})"
    if "probability" in result:
        answer = f"{result['class']} ({result['probability']:.1%})"
    elif "decision_scores" in result:
        score = result["decision_scores"][result["class"]]
        answer = f"{result['class']} (decision score {score:+.3f}; {result['note']})"
    else:
        answer = result["class"]
    if result.get("unfamiliar"):
        return (f"{result['file']}: unfamiliar input ({'; '.join(result['unfamiliar_reasons'])}): {answer} is not "
                "to be trusted")
    return f"{result['file']}: {answer}"


def read_files(paths: list[str]) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]]]:
    files, errors = [], []
    for path in paths:
        try:
            files.append((path, Path(path).read_bytes()))
        except OSError as err:
            errors.append({"file": path, "error": f"{path}: cannot read it ({err.strerror or err})"})
    return files, errors


RUNTIME_CHOICES = {"onnx": "onnx", "keras": "native", "native": "native"}


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=list(RUNTIME_CHOICES), default="onnx", type=str.lower,
                        help="onnx (default): the files training exported and checked, through ONNX Runtime for "
                             "networks and NumPy for the SVM and detectors, without TensorFlow or scikit-learn; "
                             "keras (or native): the model as trained, with Keras or scikit-learn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a trained model folder, e.g. models/vision_scratch or models/acoustic_svm")
    parser.add_argument("files", nargs="+", help="images (.jpg/.png/.bmp) or recordings (.wav/.flac/.dat)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of one line per file")
    add_runtime_option(parser)
    args = parser.parse_args(argv)
    from vapm.serving.loading import load_model

    try:
        model = load_model(args.model_dir, runtime=RUNTIME_CHOICES[args.runtime])
    except VapmError as err:
        print(f"predict: {one_line(str(err))}", file=sys.stderr)
        return 1
    files, unreadable = read_files(args.files)
    results = model.predict_files(files) + unreadable
    order = {path: i for i, path in enumerate(args.files)}
    results.sort(key=lambda result: order[result["file"]])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(describe(result), file=sys.stderr if "error" in result else sys.stdout)
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
