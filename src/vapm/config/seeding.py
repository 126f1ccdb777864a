"""One seed for Python, NumPy and TensorFlow, so a commit and its params give the same metrics on any machine."""
from __future__ import annotations

import logging
import os
import random

import numpy as np

from vapm.config.cpu_dispatch import DEFAULT_THREADS, ComputeReport, configure_compute, describe

log = logging.getLogger(__name__)


def set_global_seed(seed: int, *, tensorflow: bool = True, threads: int = DEFAULT_THREADS) -> ComputeReport:
    """Seed every generator and fix the compute configuration (thread pools, CPU dispatch checks).

    Call it first in a stage, before TensorFlow runs anything: its thread pools can only be sized before
    that. Returns the compute report; when the CPU-dispatch pins did not take effect (e.g. NumPy was
    imported before vapm) it warns, because the results may then differ from other machines'.
    """
    report = configure_compute(threads, tensorflow=True if tensorflow else None)
    if not report.pinned:
        log.warning(describe(report))
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
    return report
