"""The ONNX export of a Keras model (model.onnx) and the ONNX Runtime session that answers with it.

Training writes model.onnx beside model.keras and checks it on the whole test split before the model folder is
kept: the same top-1 class for every item and probabilities within `EXPORT_TOLERANCE`. A bad export is a failed
stage, never a file that only logs an error (tf2onnx writes unusable graphs without raising). Predict, the served
model and the monitor then load the ONNX file: importing onnxruntime costs 0.16 s where TensorFlow costs 5-6 s.

Export (tensorflow, tf2onnx) happens only in training; `OnnxModel` needs only numpy and onnxruntime.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.core.npy_rows import in_chunks

ONNX_FILE = "model.onnx"
OPSET = 17
# The largest difference in any probability between Keras and ONNX Runtime that the export may show. Both run
# float32 with different kernels, fusions and summation orders, so their logits differ by float32 rounding
# accumulated over the network's depth, and a probability p by about p (1 - p) times that. The small CNNs differ by
# under 1e-6; EfficientNet-Lite0 (60-odd layers) on the demo's NEU test split by 1.5e-5, where Keras's own answers
# for one image alone and in a batch of 256 already differ by 3.2e-6 (oneDNN blocks sums by batch size).
EXPORT_TOLERANCE = 5e-5
# A classifier's graph has a second output, the features its unfamiliar-input flag scores (the penultimate
# layer). Float32 rounding moves them by a few units in the 7th digit of their largest value (measured: 5e-7 of it);
# the check allows 1e-4 of it, and that the flag's scores stay within the same share (vapm.artefacts.keras).
FEATURE_TOLERANCE = 1e-4
INPUT_NAME = "input"
CHECK_BATCH = 256  # Keras's batch in the check: its answers depend on the batch size (see above)
CHECK_CHUNK = CHECK_BATCH  # checked a batch at a time (memory does not grow with the test split): the same numbers
# ONNX Runtime's CPU kernels compute each item on its own: the three networks' outputs are the same bits at any
# batch size (tests/serving/test_onnx_runtime.py), while the activations of a batch cost memory in proportion to it
# (256 images of 64 px: 370 MB for vision_scratch; 64 of them: 4 % slower per image than 256).
RUN_BATCH = 64


@dataclass
class OnnxModel:
    """An ONNX Runtime session and what it takes: float32 inputs of `input_shape` with a batch dimension first."""
    session: Any
    path: Path

    @property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        """As a Keras model is called on a batch (what the autoencoder detector does with its network)."""
        return self.scores(x)

    @property
    def has_features(self) -> bool:
        return len(self.session.get_outputs()) > 1

    def outputs(self, x: Any) -> list[np.ndarray]:
        """Every graph output for the batch x: the scores, then (a classifier exported with them) its features."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        count = len(self.session.get_outputs())
        if not len(x):
            return [np.zeros((0,), np.float32)] * count
        batches = [self.session.run(None, {self.input_name: x[i:i + RUN_BATCH]}) for i in range(0, len(x), RUN_BATCH)]
        return [np.concatenate([batch[k] for batch in batches]).astype(np.float32) for k in range(count)]

    def scores(self, x: Any) -> np.ndarray:
        return self.outputs(x)[0]

    def predict_on_batch(self, x: Any) -> np.ndarray:
        """As Keras's `predict_on_batch`: the first output for one batch (PatchCore's patch extractor)."""
        return self.scores(x)

    def scores_and_features(self, x: Any) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """The scores and the feature groups (every further output), None for an export without them."""
        outputs = self.outputs(x)
        return outputs[0], (outputs[1:] or None)


def open_session(path: Path, threads: int = 0, spin: bool = True, arena: bool = True) -> OnnxModel:
    """An ONNX Runtime session on the CPU; threads 0 lets ONNX Runtime use one per physical core. spin False: its
    threads sleep as soon as a run ends instead of spinning for the next one, for a caller whose own work (NumPy,
    BLAS) follows each run on the same cores."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path} not found: the model was trained before vapm exported ONNX; retrain it "
                            "(dvc repro) or use --runtime keras")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ONNX Runtime's warnings are about graph fusions, not the user
    options.enable_cpu_mem_arena = arena
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
        raise ArtefactError(f"{path} cannot be loaded by ONNX Runtime ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'no message'}); retrain the model") from None
    return OnnxModel(session, path)


def onnx_graph_of(model: Any) -> Any:
    """The Keras model as an ONNX ModelProto in canonical form (tf2onnx, opset OPSET, any batch size)."""
    import tensorflow as tf
    import tf2onnx

    from vapm.artefacts.onnx_graph import canonical

    shape = (None, *model.inputs[0].shape[1:])
    spec = [tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)]
    with consumers_in_name_order():
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return canonical(proto)


@contextmanager
def consumers_in_name_order() -> Iterator[None]:
    """tf2onnx's graph keeps the consumers of each tensor as a set of node names (`Graph._output_to_consumers`),
    so `Graph.find_output_consumers` lists them in an order that follows Python's hash seed (PYTHONHASHSEED,
    random per process). Its transpose optimizer pushes a transpose into a tensor's consumers in that order, and
    where a tensor feeds several branches that rejoin (the pooled std of ood.layers: the conv output minus its own
    kept-dims mean) the order decides whether a broadcast Reshape is folded: 34 or 35 nodes, different bytes from
    process to process. While converting, the consumers come sorted by node name instead; tf2onnx's names come from
    its own counters and the Keras graph, the same in every process that runs the same steps. Exports that never
    depended on the order keep their bytes (the three networks without ood.layers: checked)."""
    from tf2onnx.graph import Graph

    unordered = Graph.find_output_consumers

    def ordered(self: Any, output_name: str) -> list[Any]:
        return sorted(unordered(self, output_name), key=lambda node: node.name)

    Graph.find_output_consumers = ordered
    try:
        yield
    finally:
        Graph.find_output_consumers = unordered


@dataclass(frozen=True)
class ExportCheck:
    items: int
    max_abs_difference: float
    top1_disagreements: int

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "max_abs_difference": self.max_abs_difference,
                "top1_disagreements": self.top1_disagreements}


def check_export(keras_scores: np.ndarray, onnx_scores: np.ndarray, path: Path) -> ExportCheck:
    """Fail in one line unless ONNX Runtime gives Keras's top-1 class for every item, probabilities within tolerance."""
    keras_scores, onnx_scores = np.asarray(keras_scores, np.float64), np.asarray(onnx_scores, np.float64)
    if keras_scores.shape != onnx_scores.shape:
        raise ArtefactError(f"{path}: ONNX Runtime answers with shape {onnx_scores.shape}, Keras with "
                            f"{keras_scores.shape}: the export is broken")
    items = len(keras_scores)
    difference = float(np.max(np.abs(keras_scores - onnx_scores))) if items else 0.0
    disagreements = int(np.sum(keras_scores.argmax(axis=1) != onnx_scores.argmax(axis=1))) if items else 0
    if not np.isfinite(difference) or difference > EXPORT_TOLERANCE or disagreements:
        raise ArtefactError(f"{path}: the ONNX export does not answer as the Keras model does on the {items} test "
                            f"items (largest probability difference {difference:.3g}, allowed {EXPORT_TOLERANCE:g}; "
                            f"{disagreements} different top-1 classes)")
    return ExportCheck(items, difference, disagreements)


def check_features(keras_features: np.ndarray, onnx_features: np.ndarray, path: Path) -> float:
    """Fail in one line unless the exported features equal Keras's within FEATURE_TOLERANCE of their scale."""
    keras_features, onnx_features = np.asarray(keras_features, np.float64), np.asarray(onnx_features, np.float64)
    if keras_features.shape != onnx_features.shape:
        raise ArtefactError(f"{path}: the exported features have shape {onnx_features.shape}, Keras's "
                            f"{keras_features.shape}: the export is broken")
    if not len(keras_features):
        return 0.0
    scale = max(1.0, float(np.max(np.abs(keras_features))))
    difference = float(np.max(np.abs(keras_features - onnx_features)))
    if not np.isfinite(difference) or difference > FEATURE_TOLERANCE * scale:
        raise ArtefactError(f"{path}: the exported features differ from Keras's by {difference:.3g} (largest "
                            f"feature {scale:.3g}, allowed {FEATURE_TOLERANCE:g} of it)")
    return difference


def export_checked(model: Any, folder: Path, check_inputs: Any) -> ExportCheck:
    """Write folder/model.onnx from a Keras model and check it against Keras on `check_inputs` (the test split):
    the first output (the scores) always, and every further one (a classifier's feature groups)."""
    path = Path(folder) / ONNX_FILE
    path.write_bytes(onnx_graph_of(model).SerializeToString(deterministic=True))
    gc.collect()  # tf2onnx leaves its copies of the graph in reference cycles: 300 MB for vision_scratch at 64 px
    if not len(check_inputs):
        return ExportCheck(0, 0.0, 0)
    session = open_session(path, arena=False)  # one pass: an arena would only keep its largest batch's memory
    keras_chunks, onnx_chunks = [], []
    # Inputs on disk (vapm.core.npy_rows) are read CHECK_CHUNK items at a time: the outputs are small.
    for chunk in in_chunks(check_inputs, CHECK_CHUNK):
        x = np.asarray(chunk, dtype=np.float32)
        outputs = model.predict(x, batch_size=CHECK_BATCH, verbose=0)
        keras_chunks.append(outputs if isinstance(outputs, (list, tuple)) else [outputs])
        onnx_chunks.append(session.outputs(x))
    keras_outputs = [np.concatenate(parts) for parts in zip(*keras_chunks)]
    onnx_outputs = [np.concatenate(parts) for parts in zip(*onnx_chunks)]
    if len(onnx_outputs) != len(keras_outputs):
        raise ArtefactError(f"{path}: the export has {len(onnx_outputs)} outputs, the Keras model "
                            f"{len(keras_outputs)}: the export is broken")
    check = check_export(keras_outputs[0], onnx_outputs[0], path)
    for keras_features, onnx_features in zip(keras_outputs[1:], onnx_outputs[1:]):
        check_features(keras_features, onnx_features, path)
    return check
