"""Trained models on the line: a model folder loaded once and used on raw files (`loading`), the served MLflow
model (`pyfunc`) and the folder monitor (`monitor`: the watcher; `untrusted_files`: reading what lands in the
folder safely; `monitor_state`: what was scored; `alerts`: what a scored file becomes; `warm_models`).

May import: vapm.core, vapm.config, vapm.data, vapm.models, vapm.artefacts. What it imports is what a logged
MLflow model carries (`pyfunc.SERVED_CODE`).
"""
