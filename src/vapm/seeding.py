"""One seed for Python, NumPy and TensorFlow, so a commit and its params give the same metrics."""
from __future__ import annotations

import os
import random

import numpy as np


def set_global_seed(seed: int, *, tensorflow: bool = True, threads: int | None = None) -> None:
    """Seed everything; with `threads`, also fix TensorFlow's thread pools (call before any TF work)."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    if tensorflow:
        import keras
        import tensorflow as tf

        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:
                pass  # TensorFlow already started in this process (tests): its pools stay as they are
        keras.utils.set_random_seed(seed)
        try:
            tf.config.experimental.enable_op_determinism()
        except RuntimeError:
            pass  # already enabled in this process
