"""Evaluating trained models and comparing them.

- `metrics`: accuracy with its Wilson interval, macro-F1, per-class scores, confusion counts, McNemar.
- `figures`: confusion matrices and training curves as PNG; anomaly maps over their images (`save_anomaly_overlay_png`,
  `save_anomaly_gallery_png`: worst misses and false alarms first).
- `segmentation`: pixel-level scores of anomaly maps against defect masks (pixel AUROC, the MVTec AD AUPRO).
- `evaluate`: the evaluate stage's work per model (DVC metrics, details, DVCLive plot data).
- `crossval`: the k-fold evaluation's scores per fold, their mean ± sd, and its files (`vapm crossval`).
- `report`: what a change did to the models, against a git ref (`vapm report`).

May import: vapm.core, vapm.config.
"""
