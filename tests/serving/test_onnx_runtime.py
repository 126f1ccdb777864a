"""The ONNX runtime: every network's export answers as Keras does, its bytes are canonical, a bad export fails in
one line, and `vapm predict` on it never imports TensorFlow nor prints TensorFlow's log lines."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from tests.models.test_models import TRANSFER, pattern_images
from tests.serving.test_serving import RATE, build_acoustic_model, build_vision_model
from tests.training.test_training import make_job, tiny_split
from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.onnx import EXPORT_TOLERANCE, RUN_BATCH, check_export, onnx_graph_of, open_session
from vapm.artefacts.onnx_graph import noop_reshapes
from vapm.config.model_registry import load_registry
from vapm.config.seeding import set_global_seed
from vapm.core.native_logs import is_native_log_line, split_forwardable
from vapm.data.features.records import ImageRecord
from vapm.data.synth.acoustic import render_clip
from vapm.data.synth.vision import render_defect
from vapm.models.vision_transfer import trainer as vision_transfer
from vapm.models.vision_transfer.bases import resolve_weights
from vapm.serving.loading import load_model
from vapm.training.run import save_outputs

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "tf2onnx", "torch")


def build_transfer_model(folder: Path) -> None:
    """vision_transfer on its real base (EfficientNet-Lite0 with the packaged ImageNet weights) at 64 px."""
    images, labels = pattern_images(8, 40, n_classes=3)
    params = TRANSFER.model_copy(update={"base": "efficientnet_lite0", "weights": "imagenet", "input_size": 64,
                                         "dense_units": 8})
    weights = resolve_weights("efficientnet_lite0", "imagenet", "fail", alpha=1.0, input_size=64)
    job = make_job(images, labels, tiny_split(labels), params, epochs=1)
    job = job.__class__(**{**job.__dict__, "features": job.features.__class__(
        **{**job.features.__dict__, "record": ImageRecord(image_size=40).to_dict()})})
    set_global_seed(0)
    save_outputs(folder, load_registry(REPO_ROOT / "models.yaml")["vision_transfer"], job,
                 vision_transfer.train_transfer(job, weights))


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """The three networks, trained for an epoch on tiny data and saved by the train stage's own code (which
    exports model.onnx and checks it on the test split), and raw files for them."""
    root = tmp_path_factory.mktemp("onnx")
    for name, build in (("vision_scratch", build_vision_model), ("vision_transfer", build_transfer_model),
                        ("acoustic_cnn", build_acoustic_model)):
        build(root / name)
    rng = np.random.default_rng(3)
    for i, label in enumerate(("Patches", "Crazing")):
        Image.fromarray(render_defect(label, 200, rng)).save(root / f"strip_{i}.png")
    for i, label in enumerate(("Healthy", "Piston")):
        clip = render_clip(label, 50_000, RATE, rng)
        buffer = io.BytesIO()
        sf.write(buffer, clip / np.abs(clip).max() * 0.5, 16667, format="WAV", subtype="PCM_16")
        (root / f"clip_{i}.wav").write_bytes(buffer.getvalue())
    return root


FILES = {"vision_scratch": ["strip_0.png", "strip_1.png"], "vision_transfer": ["strip_0.png", "strip_1.png"],
         "acoustic_cnn": ["clip_0.wav", "clip_1.wav"]}


@pytest.mark.parametrize("name", list(FILES))
def test_onnx_runtime_answers_as_keras_on_raw_files(networks, name):
    folder = networks / name
    record = json.loads((folder / "record.json").read_text())
    assert record["runtimes"] == {"onnx": "model.onnx"} and (folder / "model.onnx").is_file()
    files = [(file, (networks / file).read_bytes()) for file in FILES[name]]
    onnx_answers = load_model(folder).predict_files(files)
    keras_answers = load_model(folder, runtime="native").predict_files(files)
    for onnx_answer, keras_answer in zip(onnx_answers, keras_answers, strict=True):
        assert onnx_answer["class"] == keras_answer["class"]
        for cls, p in keras_answer["probabilities"].items():
            assert abs(onnx_answer["probabilities"][cls] - p) <= EXPORT_TOLERANCE


@pytest.mark.parametrize("name", list(FILES))
def test_onnx_runtime_gives_the_same_bits_at_every_batch_size(networks, name):
    """Why OnnxModel runs RUN_BATCH items at a time (memory in proportion to the batch): the outputs do not depend
    on it. Keras's do (oneDNN blocks its sums by batch size), which is why the export check keeps CHECK_BATCH."""
    session = open_session(networks / name / "model.onnx").session
    shape = [67 if not isinstance(n, int) else n for n in session.get_inputs()[0].shape]
    x = np.random.default_rng(5).uniform(0, 255, size=shape).astype(np.float32)

    def outputs(batch: int) -> list[np.ndarray]:
        runs = [session.run(None, {session.get_inputs()[0].name: x[i:i + batch]}) for i in range(0, len(x), batch)]
        return [np.concatenate([run[k] for run in runs]) for k in range(len(runs[0]))]

    from vapm.serving import bundle_program

    assert bundle_program.BATCH == RUN_BATCH  # the stand-alone bundle keeps its own copy of the batch size
    whole = outputs(len(x))
    assert len(whole) == 2  # the scores and the features of the unfamiliar-input flag
    for batch in (1, 7, RUN_BATCH):
        assert all(np.array_equal(a, b) for a, b in zip(outputs(batch), whole, strict=True)), batch


def test_two_exports_of_one_network_have_the_same_bytes(networks):
    import keras

    from vapm.artefacts.keras import with_features

    model = with_features(keras.models.load_model(networks / "acoustic_cnn" / "model.keras", compile=False))
    first = onnx_graph_of(model).SerializeToString(deterministic=True)
    second = onnx_graph_of(model).SerializeToString(deterministic=True)  # tf2onnx's name counters have moved on
    assert first == second == (networks / "acoustic_cnn" / "model.onnx").read_bytes()


def test_no_export_keeps_a_reshape_that_changes_no_shape(networks):
    # tf2onnx folds such a Reshape in one process and keeps it in another (EfficientNet-Lite0's 1x1 maps at 32 px):
    # the canonical form keeps none, so both give one file.
    import onnx

    for name in ("vision_scratch", "vision_transfer", "acoustic_cnn"):
        assert noop_reshapes(onnx.load(networks / name / "model.onnx")) == {}, name


def _reshape_graph(noop_steps: int, allowzero: int = 0):
    """x (batch, 4, 1, 1) -> Relu -> `noop_steps` Reshapes that change no shape -> Reshape to (batch, 4) -> y,
    and a second output from a no-op Reshape straight after the Relu."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    source = "r"
    for k in range(noop_steps):
        target = "same_first" if k % 2 else "same_minus"
        nodes.append(helper.make_node("Reshape", [source, target], [f"s{k}"], allowzero=allowzero))
        source = f"s{k}"
    nodes += [helper.make_node("Reshape", [source, "flat"], ["y"]),
              helper.make_node("Reshape", ["r", "same_minus"], ["kept"])]
    constants = [numpy_helper.from_array(np.array(shape, dtype=np.int64), name) for name, shape in
                 (("same_minus", [-1, 4, 1, 1]), ("same_first", [0, 4, 1, 1]), ("flat", [-1, 4]))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
                               helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["n", 4, 1, 1])],
                              constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_canonical_form_drops_every_reshape_that_changes_no_shape_and_computes_the_same():
    import onnxruntime as ort

    from vapm.artefacts.onnx_graph import canonical, serialised

    x = np.random.default_rng(0).normal(size=(3, 4, 1, 1)).astype(np.float32)
    forms = [serialised(_reshape_graph(steps)) for steps in (0, 1, 2, 3)]
    assert len(set(forms)) == 1
    ops = [node.op_type for node in canonical(_reshape_graph(3)).graph.node]
    assert ops.count("Reshape") == 2  # the one that flattens, and the one that gives a graph output
    for form in (forms[0], _reshape_graph(3).SerializeToString()):
        y, kept = ort.InferenceSession(form, providers=["CPUExecutionProvider"]).run(None, {"x": x})
        assert np.array_equal(y, np.maximum(x, 0).reshape(3, 4)) and np.array_equal(kept, np.maximum(x, 0))
    # With allowzero a 0 means a dimension of size 0, not "as the input": that Reshape is not a no-op.
    assert noop_reshapes(_reshape_graph(2, allowzero=1)) == {"s0": "r"}


def test_an_export_that_answers_otherwise_fails_in_one_line(tmp_path):
    keras_scores = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert check_export(keras_scores, keras_scores + 2e-6, tmp_path / "model.onnx").max_abs_difference < 3e-6
    for onnx_scores, reason in ((keras_scores + [[6e-5, -6e-5], [0, 0]], "largest probability difference 6e-05"),
                                (np.array([[0.7, 0.3], [0.6, 0.4]]), "1 different top-1 classes"),
                                (keras_scores[:1], "shape (1, 2)"),
                                (np.full((2, 2), np.nan), "difference nan")):
        with pytest.raises(ArtefactError, match=re.escape(reason)) as caught:
            check_export(keras_scores, onnx_scores, tmp_path / "model.onnx")
        assert "\n" not in str(caught.value)


def test_an_old_model_folder_without_onnx_says_what_to_do(networks, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(networks / "vision_scratch", old)
    (old / "model.onnx").unlink()
    with pytest.raises(ArtefactError, match="retrain it .*or use --runtime keras"):
        load_model(old)


def _vapm(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **env}
    return subprocess.run([sys.executable, "-m", "vapm", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300, check=False)


def test_predict_with_onnx_imports_no_tensorflow(networks):
    # `vapm predict` in a subprocess, then a look at what it imported: the command fails if TensorFlow came in.
    probe = ("import sys, runpy; sys.argv = ['vapm', 'predict', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('vapm', run_name='__main__')\nexcept SystemExit as done:\n    code = done.code\n"
             f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
             "print('HEAVY', heavy, file=sys.stderr)\nsys.exit(3 if heavy else code)")
    for name, files in FILES.items():
        done = subprocess.run([sys.executable, "-c", probe, str(networks / name), *files], cwd=networks,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "HEAVY []" in done.stderr and len(done.stdout.strip().splitlines()) == 2


def test_predict_prints_no_tensorflow_log_lines_unless_verbose(networks):
    quiet = _vapm(["predict", str(networks / "vision_scratch"), "strip_0.png", "--runtime", "keras"], networks)
    assert quiet.returncode == 0 and quiet.stdout.startswith("strip_0.png: ")
    assert quiet.stderr == ""
    verbose = _vapm(["predict", str(networks / "vision_scratch"), "strip_0.png", "--runtime", "keras", "--verbose"],
                    networks)
    # TensorFlow does log on import (oneDNN's notice), so the quiet run above had something to hide.
    assert verbose.returncode == 0 and any(is_native_log_line(line.encode()) for line in verbose.stderr.splitlines())
    onnx = _vapm(["predict", str(networks / "vision_scratch"), "strip_0.png", "nope.png"], networks)
    assert onnx.returncode == 1 and onnx.stderr == "nope.png: cannot read it (No such file or directory)\n"


def test_the_log_filter_drops_only_native_log_lines():
    native = (b"I0000 00:00:1796379333.187701    6313 port.cc:153] oneDNN custom operations are on.\n"
              b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
              b"E0000 00:00:1796379334.1 6313 meta_optimizer.cc:966] NodeDef mentions attribute use_unbounded\n"
              b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
              b"with the appropriate compiler flags.\n")
    assert split_forwardable(native) == (b"", b"")
    ours = b"strip.png: cannot read it\nWARNING: disk nearly full\nI0 is a name\n"
    assert split_forwardable(ours) == (ours, b"")
    assert split_forwardable(b"epoch 3/9 \r") == (b"epoch 3/9 \r", b"")      # a redrawn progress bar goes at once
    assert split_forwardable(b"ok\nI0000 00:00:17") == (b"ok\n", b"I0000 00:00:17")  # may still become one: held
