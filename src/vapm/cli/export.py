"""Write a trained network as a self-contained folder for a small box: ONNX model, predict.py, README.

    vapm export models/acoustic_cnn bundles/acoustic_cnn
    vapm export models/vision_scratch bundles/vision_scratch --int8

The bundle's predict.py needs only numpy, onnxruntime and pillow (images) or soundfile (recordings); it prepares
each file as vapm does, with the settings of the model's record.json. With --int8 the bundle also holds an int8
model (ONNX Runtime static quantisation calibrated on training items of the workspace's features), with its
accuracy and the float model's on the test split. DEST must be new or empty; a failure leaves nothing there.
"""
from __future__ import annotations

import argparse
import sys

from vapm.core.errors import VapmError, one_line


def main(argv: list[str] | None = None) -> int:
    from vapm.serving.bundle import CALIBRATION_ITEMS, CALIBRATION_SEED

    parser = argparse.ArgumentParser(prog="vapm export", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a trained network's folder: models/vision_scratch, models/vision_transfer "
                                          "or models/acoustic_cnn")
    parser.add_argument("dest", help="the bundle folder to write (new or empty)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx, calibrated on training "
                                                            "items, and its test accuracy beside the float model's")
    parser.add_argument("--calibration-items", type=int, default=CALIBRATION_ITEMS, metavar="N",
                        help=f"training items to calibrate the int8 model on (default {CALIBRATION_ITEMS})")
    parser.add_argument("--seed", type=int, default=CALIBRATION_SEED, help="seed of the calibration sample")
    parser.add_argument("--features", default=None, metavar="DIR",
                        help="the features folder to calibrate and test on (default: the model's input in "
                             "models.yaml, e.g. data/features/image)")
    args = parser.parse_args(argv)
    if args.calibration_items < 1:
        parser.error("--calibration-items must be at least 1")
    from vapm.serving.bundle import export_bundle

    try:
        bundle = export_bundle(args.model_dir, args.dest, int8=args.int8, features=args.features,
                               calibration_items=args.calibration_items, seed=args.seed)
    except VapmError as err:
        print(f"export: {one_line(str(err))}", file=sys.stderr)
        return 1
    print(f"{bundle.folder}: {', '.join(bundle.files)}")
    if bundle.int8 is not None:
        report = bundle.int8

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1%}"
        print(f"int8 on {report.test_items} test items: float accuracy {pct(report.float_accuracy)}, int8 accuracy "
              f"{pct(report.int8_accuracy)}, top-1 agreement {pct(report.top1_agreement)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
