"""Visual anomaly detection with PatchCore (Roth et al., CVPR 2022): learn normal images' patches, flag the rest.

Registered as `vision_anomaly` (models.yaml, issue 21): `trainer.train(job)` builds the memory bank from the train
split's `normal_class` images only and sets the threshold on normal images the bank was not built from.

    extractor, weights = build_extractor(params, image_size, seed)     # EfficientNet-Lite0 up to params.layers
    model = fit_patchcore(images, labels, splits, class_names, settings=params, seed=seed)
    scores = model.score_images(test_images)                           # float64, higher = more abnormal
    scores, maps = model.score_with_maps(test_images)                  # maps: (N, S, S), where the defect is
    model.is_abnormal(scores)                                          # score > model.threshold.value
    model.save(folder); PatchCoreModel.load(folder)

Modules (each small, each tested on tiny inputs):
- `features`: the Keras patch extractor (base layers -> 3x3 local average -> bilinear resize -> concatenate ->
  optional channel pooling), `channel_pooling_matrix`, `extract_patches`.
- `coreset`: seeded random projection and greedy k-center selection of the memory bank.
- `scoring`: exact nearest-bank distances (float32 ranking, float64 re-check), image scores with the paper's
  reweighting, the anomaly map (bilinear upsampling + Gaussian, sigma 4).
- `model`: `PatchCoreModel` (score, save, load) and `fit_patchcore`; the threshold is
  `vapm.models.components.anomaly_threshold`'s, shared with acoustic_anomaly.
- `settings`: `Params`, the `vision_anomaly:` params section.
- `overlay`: an anomaly map drawn over its image (PNG), for the gallery, `vapm predict --heatmap` and the monitor.
"""
from vapm.models.vision_anomaly.model import PatchCoreModel, fit_patchcore
from vapm.models.vision_anomaly.trainer import Params, train

__all__ = ["Params", "PatchCoreModel", "fit_patchcore", "train"]
