"""Evaluating trained models and comparing them.

- `metrics`: accuracy with its Wilson interval, macro-F1, per-class scores, confusion counts, McNemar.
- `figures`: confusion matrices and training curves as PNG.
- `evaluate`: the evaluate stage's work per model (DVC metrics, details, DVCLive plot data).
- `crossval`: the k-fold evaluation's scores per fold, their mean ± sd, and its files (`vapm crossval`).
- `report`: what a change did to the models, against a git ref (`vapm report`).

May import: vapm.core, vapm.config.
"""
