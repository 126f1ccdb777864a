"""Classify new images or recordings with a trained model folder.

    vapm predict models/vision_scratch strip_0412.jpg [more files ...]
    vapm predict models/acoustic_cnn recording.wav --json
    vapm predict models/vision_anomaly part.jpg --heatmap heatmaps/

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
        line = f"{result['file']}: {result['status']} (score {result['score']:.4g}, threshold {result['threshold']:.4g})"
        return line + (f"; heatmap {result['heatmap']}" if "heatmap" in result else "")
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


RUNTIME_CHOICES = {"onnx": "onnx", "keras": "native", "native": "native", None: None}


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=[name for name in RUNTIME_CHOICES if name], default=None,
                        type=str.lower,
                        help="onnx (the default where the model has it): the files training exported and checked, "
                             "through ONNX Runtime for networks and NumPy for the SVM and detectors, without "
                             "TensorFlow or scikit-learn; keras (or native): the model as trained, with Keras or "
                             "scikit-learn (the default for a model folder saved without a light runtime)")


def write_heatmaps(results: list[dict[str, Any]], folder: Path) -> None:
    """Each answer's anomaly map over its image, with score and threshold, as folder/<file name>.png (the answer's
    "heatmap" then names it)."""
    from vapm.models.vision_anomaly.overlay import save_answer_overlay_png

    used: set[str] = set()
    for result in results:
        heatmap, image = result.pop("anomaly_map", None), result.pop("anomaly_image", None)
        if heatmap is None:
            continue
        stem, n = Path(result["file"]).stem, 1
        while (name := stem if n == 1 else f"{stem}-{n}") in used:  # two files of one name from two folders
            n += 1
        used.add(name)
        path = save_answer_overlay_png(image, heatmap, result, Path(result["file"]).name, folder / f"{name}.png")
        result["heatmap"] = str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a trained model folder, e.g. models/vision_scratch or models/acoustic_svm")
    parser.add_argument("files", nargs="+", help="images (.jpg/.png/.bmp) or recordings (.wav/.flac/.dat)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of one line per file")
    parser.add_argument("--heatmap", metavar="DIR", type=Path, default=None,
                        help="a visual anomaly detector (vision_anomaly) only: write each image with its anomaly map "
                             "overlaid to DIR/<file name>.png")
    add_runtime_option(parser)
    args = parser.parse_args(argv)
    from vapm.serving.loading import load_model

    try:
        model = load_model(args.model_dir, runtime=RUNTIME_CHOICES[args.runtime])
    except VapmError as err:
        print(f"predict: {one_line(str(err))}", file=sys.stderr)
        return 1
    if args.heatmap is not None and not model.gives_maps:
        print(f"predict: {args.model_dir} is {model.name}, which gives no anomaly map: --heatmap is for a visual "
              "anomaly detector such as models/vision_anomaly", file=sys.stderr)
        return 2
    files, unreadable = read_files(args.files)
    results = model.predict_files(files, maps=args.heatmap is not None) + unreadable
    if args.heatmap is not None:
        write_heatmaps(results, args.heatmap)
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
