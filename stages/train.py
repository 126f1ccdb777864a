"""Stage train@<model>: `python stages/train.py <model>` trains one model of the registry (models.yaml).

Writes models/<model>/ (the model, record.json, predictions.parquet, ...) and one MLflow run; see
vapm.training.run.
"""
from __future__ import annotations

import argparse

from vapm.core.errors import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name from models.yaml, e.g. vision_scratch")
    name = parser.parse_args().model
    with run_stage(f"train@{name}"):
        from vapm.training.run import run_training

        run_training(name)


if __name__ == "__main__":
    main()
