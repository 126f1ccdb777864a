"""vision_transfer: a pretrained image base, frozen, with a new head, then fine-tuning (see `trainer`).

- `trainer`: `Params`, `train` (the registry's interface), the model builder and its training recipe.
- `bases`: which base weights are really used (ImageNet download, a local file, or none).
"""
from vapm.models.vision_transfer.trainer import Params, train

__all__ = ["Params", "train"]
