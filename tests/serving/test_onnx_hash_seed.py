"""The ONNX export of a network with pooled statistics (ood.layers) has the same bytes in every process, whatever
Python's hash seed: tf2onnx lists a tensor's consumers from a set of node names, and its transpose optimizer
folded a broadcast Reshape or not by that order (vapm.artefacts.onnx.consumers_in_name_order)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Before the fix these six seeds gave three different exports of the two networks below.
HASH_SEEDS = ("0", "1", "2", "3", "7", "12345")


def export_digests(folder: Path) -> dict[str, str]:
    """Two tiny untrained networks with the pooled statistics of their convolutions as further outputs, exported
    and checked against Keras by the train stage's own code (export_checked); each file's node count and sha256."""
    import numpy as np
    import onnx

    from vapm.artefacts.keras import with_features
    from vapm.artefacts.onnx import ONNX_FILE, export_checked
    from vapm.config.seeding import set_global_seed
    from vapm.models import acoustic_cnn, vision_scratch

    set_global_seed(0)
    rng = np.random.default_rng(0)
    vision = vision_scratch.build(16, 3, vision_scratch.Params(filters=[4, 4], kernel_size=3, dense_units=4,
                                                               dropout=0.0), 0)
    acoustic = acoustic_cnn.build((16, 16), 3, acoustic_cnn.Params(filters=4, kernel_size=3, strides=1, pool_size=2,
                                                                   dense_units=[4], dropout=0.0),
                                  np.zeros(16, np.float32), np.ones(16, np.float32), 0)
    networks = {"vision_scratch": (vision, ("conv1", "conv2"), rng.uniform(0, 255, (8, 16, 16))),
                "acoustic_cnn": (acoustic, ("conv1",), rng.normal(size=(8, 16, 16)))}
    digests = {}
    for name, (model, layers, x) in networks.items():
        target = folder / name
        target.mkdir(parents=True)
        export_checked(with_features(model, layers), target, x.astype(np.float32))
        data = (target / ONNX_FILE).read_bytes()
        digests[name] = f"{len(onnx.load_from_string(data).graph.node)} nodes, {hashlib.sha256(data).hexdigest()}"
    return digests


def test_the_export_with_pooled_statistics_has_the_same_bytes_under_every_hash_seed(tmp_path):
    code = ("import json, sys; from pathlib import Path; from tests.serving.test_onnx_hash_seed import "
            "export_digests; print(json.dumps(export_digests(Path(sys.argv[1]))))")
    runs = {}
    for seed in HASH_SEEDS:
        env = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
        runs[seed] = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / seed)], cwd=REPO_ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    digests = {}
    for seed, run in runs.items():
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        digests[seed] = json.loads(out.strip().splitlines()[-1])
    assert all(d == digests["0"] for d in digests.values()), json.dumps(digests, indent=1)
