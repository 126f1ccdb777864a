"""Roofline: multiply-add counts against hand counts, the fused Adam against Adam's formula, the fit observer,
the book's loop, and the benchmark's ratio arithmetic. No timings are asserted."""
from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from tests.models.test_models import ACOUSTIC, SCRATCH, pattern_images
from vapm.bench import epochs as bench
from vapm.bench.book_baseline import BookCodeError, book_scratch_model, extract_train_folder, run_book
from vapm.models import acoustic_cnn, vision_scratch
from vapm.bench.roofline import ModelFlops, RooflineError, matmul_peak, model_flops, product_costs
from vapm.bench.fit_timing import Recorder, measurement_settings
from vapm.config.seeding import set_global_seed
from vapm.config.settings import TrainSettings
from vapm.models.components.keras_fit import FitInfo, compile_classifier, fit_classifier, fused_adam, observing_fits


def tiny_model(conv_trainable: bool = True) -> keras.Model:
    """(8, 8, 1) -> Conv2D 2 filters 3x3 -> Flatten (72) -> Dense 3."""
    inputs = keras.Input((8, 8, 1))
    conv = layers.Conv2D(2, 3, name="conv")
    x = layers.Flatten()(conv(inputs))
    model = keras.Model(inputs, layers.Dense(3, name="dense")(x))
    conv.trainable = conv_trainable
    return model


def test_multiply_adds_of_a_tiny_model_match_the_hand_count():
    costs = {c.layer: c for c in product_costs(tiny_model())}
    # conv: 6 x 6 positions x 2 filters, each 3 x 3 x 1 products; dense: 72 inputs x 3 units
    assert costs["conv"].macs == 6 * 6 * 2 * 9 == 648
    assert costs["dense"].macs == 72 * 3 == 216
    # the conv's input is data (no gradient), its kernel trains; the dense layer needs both gradients
    assert (costs["conv"].gradients, costs["dense"].gradients) == (1, 2)
    flops = model_flops(tiny_model())
    assert flops.forward == 2 * (648 + 216)
    assert flops.backward == 2 * (648 + 2 * 216)
    assert flops.epoch(n_fit=10, n_val=4) == 10 * (flops.forward + flops.backward) + 4 * flops.forward


def test_a_frozen_layer_costs_no_gradient_and_nothing_flows_back_into_it():
    flops = model_flops(tiny_model(conv_trainable=False))
    assert flops.forward == 2 * (648 + 216)
    assert flops.backward == 2 * 216  # only the dense kernel's gradient: its input comes from a frozen layer


def test_strided_depthwise_and_nested_models_count_each_product_once():
    inner = keras.Sequential([keras.Input((9, 9, 2)), layers.DepthwiseConv2D(3, strides=2, name="depthwise"),
                              layers.Conv2D(4, 1, name="pointwise")], name="inner")
    inputs = keras.Input((9, 9, 2))
    model = keras.Model(inputs, layers.GlobalAveragePooling2D()(inner(inputs)))
    costs = {c.layer: c for c in product_costs(model)}
    assert costs["depthwise"].macs == 4 * 4 * 2 * 9       # (9 - 3) // 2 + 1 = 4; one 3x3 sum per channel
    assert costs["pointwise"].macs == 4 * 4 * 4 * 2
    assert len(costs) == 2 and (costs["depthwise"].gradients, costs["pointwise"].gradients) == (1, 2)


def test_scratch_cnn_at_200_px_costs_the_closed_form_count():
    model = vision_scratch.build(200, 6, SCRATCH, seed=0)
    side, channels, expected = 200, 1, 0
    for filters in SCRATCH.filters:           # valid 3x3 conv, then 2x2 max-pool
        side -= 2
        expected += side * side * filters * 9 * channels
        side, channels = side // 2, filters
    expected += side * side * channels * 256 + 256 * 6
    flops = model_flops(model)
    assert flops.forward == 2 * expected
    assert flops.forward / 1e9 == pytest.approx(0.716, abs=0.001)  # the "0.72 GFLOP per image"
    first = flops.products[0]
    assert flops.backward == 2 * expected * 2 - 2 * first.macs  # nobody needs the image's gradient


def test_acoustic_cnn_counts_its_strided_convolutions():
    model = acoustic_cnn.build((104, 98), 8, ACOUSTIC, np.zeros(104), np.ones(104), seed=0)
    macs = [c.macs for c in product_costs(model)]
    side = lambda n: (n - 4) // 2 + 1  # noqa: E731
    assert macs[:2] == [side(104) * side(98) * 32 * 16, side(side(104)) * side(side(98)) * 32 * 16 * 32]
    assert macs[2:] == [12 * 11 * 32 * 512, 512 * 64, 64 * 8]


def test_unknown_shapes_are_refused_with_a_clear_error():
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, layers.Conv2D(2, 3)(inputs))
    with pytest.raises(RooflineError, match="unknown dimension"):
        product_costs(model)


def test_matmul_peak_reports_every_repeat_per_wall_and_cpu_second():
    rates = matmul_peak(size=64, repeats=3)
    assert len(rates["wall"]) == len(rates["cpu"]) == 3
    assert all(rate > 0 for rate in rates["wall"] + rates["cpu"])


# --------------------------------------------------------------------------- the fused Adam

def test_fused_adam_follows_adams_formula_over_several_steps():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(50,)).astype(np.float32)
    grads = rng.normal(size=(4, 50)).astype(np.float32)
    variable = keras.Variable(start)
    optimizer = fused_adam(1e-2)
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
    w, m, v = start.astype(np.float64), np.zeros(50), np.zeros(50)
    b1, b2, eps = optimizer.beta_1, optimizer.beta_2, optimizer.epsilon
    for t, g in enumerate(grads, start=1):
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        w -= 1e-2 * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    # float32 arithmetic over 4 steps of size ~1e-2: a few float32 ulps of the weights
    np.testing.assert_allclose(np.asarray(variable), w, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(w).max())
    assert optimizer.name == "adam"


# --------------------------------------------------------------------------- the fit observer

def test_observer_sees_every_fit_with_its_sizes_epochs_and_flops():
    set_global_seed(0)
    images, labels = pattern_images(6, 16)
    model = vision_scratch.build(16, 3, SCRATCH.model_copy(update={"filters": [4], "dense_units": 8}), seed=0)
    compile_classifier(model, 1e-3)
    recorder = Recorder()
    with observing_fits(recorder):
        fit_classifier(model, (images[:12], labels[:12]), (images[12:], labels[12:]), epochs=2, batch_size=4,
                       seed=0, phase="train")
    fit_classifier(model, (images[:12], labels[:12]), None, epochs=1, batch_size=4, seed=0, phase="after")
    assert len(recorder.phases) == 1  # the block ended: the second fit was not observed
    phase = recorder.phases[0]
    assert (phase.phase, phase.n_fit, phase.n_val, phase.batch_size) == ("train", 12, 6, 4)
    assert len(phase.epoch_wall) == len(phase.epoch_cpu) == 2 and min(phase.epoch_wall) > 0
    flops = model_flops(model)
    assert phase.epoch_flops == flops.epoch(12, 6)


def test_measurement_settings_fix_the_epochs_and_turn_the_watchers_off():
    from vapm.config.settings import load_settings

    settings = load_settings(Path(__file__).resolve().parents[2] / "params.yaml",
                             registry_path=Path(__file__).resolve().parents[2] / "models.yaml")
    changed = measurement_settings(settings, "vision_transfer", 3)
    assert changed.train_for("vision_transfer").epochs == 3
    assert changed.train_for("vision_transfer").early_stopping_patience == 0
    assert changed.model("vision_transfer").fine_tune_epochs == 3
    assert changed.train_for("vision_scratch") == settings.train_for("vision_scratch")  # others untouched


# --------------------------------------------------------------------------- the book's loop

def test_book_scratch_model_is_vapms_architecture_on_rgb_input():
    ours = model_flops(vision_scratch.build(64, 6, SCRATCH, seed=0))
    book = model_flops(book_scratch_model(64, 6, SCRATCH))
    first = ours.products[0].macs
    assert [c.macs for c in book.products[1:]] == [c.macs for c in ours.products[1:]]
    assert book.products[0].macs == 3 * first  # RGB: three input channels in the first convolution
    assert book.forward - ours.forward == 2 * 2 * first


def test_book_loop_reads_the_jpeg_folders_every_epoch_and_reports_its_epochs(tmp_path, ingest_encode_image):
    images, labels = pattern_images(6, 24)
    classes = ["Left", "Top", "Stripes"]
    archive = tmp_path / "NEU-data-TrainTest.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, (image, label) in enumerate(zip(images, labels)):
            zf.writestr(f"NEU-data-TrainTest/train/{classes[label]}/img_{i}.jpg", ingest_encode_image(image, "JPEG"))
        zf.writestr("NEU-data-TrainTest/test/Left/x.jpg", ingest_encode_image(images[0], "JPEG"))
    train_dir = extract_train_folder(archive, tmp_path / "extracted")
    assert train_dir.name == "train" and sorted(p.name for p in train_dir.iterdir()) == sorted(classes)

    class Settings:  # the parts of vapm.config.settings.Settings the loop reads
        seed = 0
        compute = type("Compute", (), {"threads": 2})()
        vision = type("Vision", (), {"image_size": 24})()

        def model(self, name):
            return SCRATCH.model_copy(update={"filters": [4], "dense_units": 8})

        def train_for(self, name):
            return TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, validation_fraction=0.2,
                                 early_stopping_patience=0, reduce_lr_patience=0, reduce_lr_factor=0.5)

        def classes(self, modality):
            return classes

    result = run_book("vision_scratch", Settings(), epochs=2, images=train_dir)
    (phase,) = result["phases"]
    assert result["runner"] == "book" and phase["phase"] == "train"
    assert phase["n_fit"] + phase["n_val"] == 18 and phase["n_val"] == 3  # Keras's split: int(0.2 x 18)
    assert len(phase["epoch_wall"]) == 2 and phase["epoch_flops"] > 0
    with pytest.raises(BookCodeError, match="no training loop"):
        run_book("acoustic_svm", Settings(), epochs=1)
    with pytest.raises(BookCodeError, match="--images"):
        run_book("vision_scratch", Settings(), epochs=1)


def test_extract_refuses_archives_without_the_books_layout(tmp_path):
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Left/a.jpg", b"x")
    with pytest.raises(BookCodeError, match="train/<Class>"):
        extract_train_folder(archive, tmp_path / "out")


# --------------------------------------------------------------------------- the benchmark's arithmetic

def _run(phases: dict[str, list[float]], total: float, load: float = 1.0, flops: float = 1e12) -> dict:
    return {"total_seconds": total, "load_before": load,
            "phases": [{"phase": name, "model": "m", "n_fit": 10, "n_val": 2, "batch_size": 4, "epoch_flops": flops,
                        "epoch_wall": walls, "epoch_cpu": [2 * w for w in walls]} for name, walls in phases.items()]}


def test_ratios_use_the_epochs_after_the_first_and_report_median_and_spread():
    pairs = [(_run({"train": [9.0, 4.0, 6.0]}, 30.0), _run({"train": [5.0, 2.0, 2.0]}, 10.0)),
             (_run({"train": [9.0, 3.0, 3.0]}, 24.0), _run({"train": [5.0, 1.0, 1.0]}, 12.0)),
             (_run({"train": [9.0, 8.0, 8.0]}, 20.0), _run({"train": [5.0, 2.0, 2.0]}, 10.0))]
    summary = bench.ratio_summary(pairs)
    ratios = summary["phases"]["train"]["ratios"]
    assert ratios == [2.5, 3.0, 4.0]  # medians of epochs 2.. : 5/2, 3/1, 8/2
    assert summary["phases"]["train"]["median"] == 3.0
    assert (summary["phases"]["train"]["min"], summary["phases"]["train"]["max"]) == (2.5, 4.0)
    assert summary["whole_run"]["ratios"] == [3.0, 2.0, 2.0]


def test_roofline_rows_divide_the_epochs_flops_by_the_median_steady_epoch():
    rows = bench.roofline_rows("m", [_run({"train": [10.0, 4.0, 5.0]}, 20.0)], peak=100.0,
                               peak_per_cpu_second=50.0, threads=2)
    (row,) = rows
    assert row["epoch_s"]["median"] == 4.5
    assert row["gflops"] == pytest.approx(1e12 / 4.5 / 1e9)
    assert row["percent_of_peak"] == pytest.approx(100 * row["gflops"] / 100.0)
    assert row["percent_of_peak_cpu_basis"] == pytest.approx(100 * (1e12 / 9.0 / 1e9) / 50.0)
    assert row["cpu_share"] == pytest.approx(1.0)


def test_model_flops_of_an_epoch_combines_training_and_validation():
    flops = ModelFlops(forward=2.0, backward=4.0)
    assert flops.training == 6.0 and flops.epoch(3, 5) == 3 * 6.0 + 5 * 2.0


def test_fit_info_carries_the_validation_batch_size():
    from vapm.models.components import keras_fit

    info = FitInfo("train", 1, 1, 16, keras_fit.VALIDATION_BATCH_SIZE, 1)
    assert info.validation_batch_size == keras_fit.VALIDATION_BATCH_SIZE
