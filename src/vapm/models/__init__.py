"""Keras model builders: pure functions of input shapes and params sections."""
from vapm.models.acoustic import acoustic_cnn_feature_side, build_acoustic_cnn, row_statistics
from vapm.models.vision import (
    BaseWeights,
    TransferModel,
    WeightsError,
    build_augmentation,
    build_vision_scratch,
    build_vision_transfer,
    calibrate_random_batchnorm,
    conv_stack_side,
    resolve_base_weights,
    unfreeze_top_layers,
)

__all__ = [
    "BaseWeights",
    "TransferModel",
    "WeightsError",
    "acoustic_cnn_feature_side",
    "build_acoustic_cnn",
    "build_augmentation",
    "build_vision_scratch",
    "build_vision_transfer",
    "calibrate_random_batchnorm",
    "conv_stack_side",
    "resolve_base_weights",
    "row_statistics",
    "unfreeze_top_layers",
]
