"""One seed for Python, NumPy and TensorFlow, so a commit and its params give the same metrics."""
from __future__ import annotations

import os
import random

import numpy as np


def set_global_seed(seed: int, *, tensorflow: bool = True) -> None:
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    if tensorflow:
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(seed)
        try:
            tf.config.experimental.enable_op_determinism()
        except RuntimeError:
            pass  # already enabled in this process
