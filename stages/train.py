"""Stage train@<model>: `python stages/train.py <model>` trains one model of the registry (models.yaml).

Writes models/<model>/ (the model, record.json, predictions.parquet, ...) and one MLflow run; see
vapm.training.run. TensorFlow's own log lines are kept off stderr unless VAPM_VERBOSE=1.
"""
from __future__ import annotations

import argparse
import os

from vapm.core.errors import run_stage
from vapm.core.native_logs import quiet_native_logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name from models.yaml, e.g. vision_scratch")
    name = parser.parse_args().model
    if os.environ.get("VAPM_VERBOSE") != "1":
        quiet_native_logs()
    with run_stage(f"train@{name}"):
        from vapm.training.run import run_training

        run_training(name)


if __name__ == "__main__":
    main()
