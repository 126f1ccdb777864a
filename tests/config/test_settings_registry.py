"""Typed settings from params.yaml and the model registry (models.yaml)."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vapm.config.model_registry import RegistryError, load_registry, parse_registry
from vapm.config.settings import ParamsError, TrainSettings, parse_settings, read_params

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = read_params(REPO_ROOT / "params.yaml")
REGISTRY = load_registry(REPO_ROOT / "models.yaml")


def parse(params: dict):
    return parse_settings(params, {name: entry.params_class() for name, entry in REGISTRY.items()})


def test_repository_params_parse_into_typed_settings():
    settings = parse(PARAMS)
    assert settings.audio.sample_rate == pytest.approx(50000 / 3) and settings.audio.clip_samples == 50_000
    assert settings.ingest.on_bad_file in ("fail", "skip")
    assert set(settings.models) == set(REGISTRY)
    assert settings.train_for("vision_scratch") == settings.train  # empty overrides keep the shared values
    assert settings.mlflow.champion_metric == "macro_f1"
    without = copy.deepcopy(PARAMS)
    del without["mlflow"]["champion_metric"]
    assert parse(without).mlflow.champion_metric == "macro_f1"  # the default, for params.yaml files before it


def test_a_models_train_mapping_overrides_only_its_own_keys():
    params = copy.deepcopy(PARAMS)
    params["vision_scratch"]["train"]["epochs"] = 30
    settings = parse(params)
    assert settings.train_for("vision_scratch").epochs == 30
    assert settings.train_for("acoustic_cnn").epochs == PARAMS["train"]["epochs"]
    assert settings.train_for("vision_scratch").batch_size == PARAMS["train"]["batch_size"]


def test_every_bad_value_is_reported_at_once_with_its_dotted_name():
    bad = copy.deepcopy(PARAMS)
    bad["seed"] = "abc"
    bad["ingest"]["n_jobs"] = "two"
    bad["audio"]["clip_seconds"] = "three"
    bad["ingest"]["vision_archive"] = None
    bad["train"]["epochs"] = "ten"
    bad["train"]["learning_rate"] = "fast"
    bad["vision_scratch"]["kernel_size"] = 0
    bad["acoustic_cnn"]["dropout"] = 1.5
    bad["acoustic_svm"]["max_iter"] = -1
    bad["acoustic_svm"]["C_grid"] = "0.1"
    bad["vision"]["image_size"] = 100000
    bad["ingest"]["n_job"] = 2
    with pytest.raises(ParamsError) as caught:
        parse(bad)
    message = str(caught.value)
    assert "\n" not in message
    for key in ["seed", "ingest.n_jobs", "audio.clip_seconds", "ingest.vision_archive", "train.epochs",
                "train.learning_rate", "vision_scratch.kernel_size", "acoustic_cnn.dropout", "acoustic_svm.max_iter",
                "acoustic_svm.C_grid", "vision.image_size", "ingest.n_job: unknown key"]:
        assert f"{key}" in message, key
    for bad_seed in (-1, 2**40, True):
        params = copy.deepcopy(PARAMS)
        params["seed"] = bad_seed
        with pytest.raises(ParamsError, match="seed"):
            parse(params)


@pytest.mark.parametrize("section, key, value", [
    ("audio", "clip_seconds", -3), ("audio", "clip_seconds", 0), ("audio", "sample_rate", "fast"),
    ("audio", "sample_rate", "1/0"), ("vision", "classes", ["A", "a"]), ("train", "reduce_lr_factor", 1.0),
    ("mlflow", "champion_metric", "f1"), ("mlflow", "champion_metric", "auc"),
])
def test_out_of_range_values_are_refused(section, key, value):
    params = copy.deepcopy(PARAMS)
    params[section][key] = value
    with pytest.raises(ParamsError, match=f"{section}.{key}"):
        parse(params)


def test_a_model_without_a_params_section_is_named():
    params = copy.deepcopy(PARAMS)
    del params["acoustic_cnn"]
    with pytest.raises(ParamsError, match="acoustic_cnn: missing"):
        parse(params)


def test_watchers_need_a_validation_slice():
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainSettings(epochs=1, batch_size=1, learning_rate=0.1, validation_fraction=0.0, early_stopping_patience=3,
                      reduce_lr_patience=0, reduce_lr_factor=0.5)


def test_registry_entries_are_checked():
    good = yaml.safe_load((REPO_ROOT / "models.yaml").read_text())
    assert list(parse_registry(good)) == list(REGISTRY)
    for change, message in [({"artefact": "onnx"}, "artefact"), ({"trainer": "elsewhere/x.py"}, "under src/vapm"),
                            ({"defaults": "other"}, "defaults"), ({"colour": "red"}, "colour")]:
        broken = copy.deepcopy(good)
        broken["models"]["vision_scratch"].update(change)
        with pytest.raises(RegistryError, match=message):
            parse_registry(broken)
    with pytest.raises(RegistryError, match="non-empty"):
        parse_registry({"models": {}})


def test_every_registered_trainer_provides_params_and_train():
    for name, entry in REGISTRY.items():
        module = entry.load_trainer()
        assert callable(module.train) and issubclass(module.Params, object), name
        assert entry.module_name.startswith("vapm.models.")


def test_params_yaml_is_written_the_way_dvc_writes_it_back(tmp_path):
    """`dvc exp run -S key=value` rewrites all of params.yaml (Hydra overrides, then its round-trip writer, which
    turns lists into block style and nulls into empty values): a file already in that style changes in exactly
    the line of the value."""
    from dvc.utils.hydra import apply_overrides

    copy_path = tmp_path / "params.yaml"
    copy_path.write_text((REPO_ROOT / "params.yaml").read_text())
    apply_overrides(copy_path, ["seed=42"])  # what `-S seed=42` does: the same value, DVC's style
    assert copy_path.read_text() == (REPO_ROOT / "params.yaml").read_text()
    apply_overrides(copy_path, ["train.epochs=3"])
    changed = [(a, b) for a, b in zip((REPO_ROOT / "params.yaml").read_text().splitlines(),
                                      copy_path.read_text().splitlines()) if a != b]
    assert changed == [("  epochs: 20", "  epochs: 3")]


def test_a_stage_reports_bad_params_in_one_line_before_any_work(tmp_path):
    params = copy.deepcopy(PARAMS)
    params["featurize"]["n_mels"] = "many"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "featurize.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "featurize: params.yaml: featurize.n_mels: input should be a valid integer (got 'many')"
    assert not (tmp_path / "data").exists()


def test_an_answers_flag_rate_is_shared_equally_among_the_learnt_rules_it_passes():
    from vapm.config.settings import LEARNT_RULES, OodSettings

    ood = OodSettings(false_flag_rate=0.03)
    assert ood.rule_rate("vision") == pytest.approx(0.01)  # polarity, likeness, distance
    assert ood.rule_rate("audio") == 0.03  # the distance alone
    modalities = {entry.modality for entry in load_registry(REPO_ROOT / "models.yaml").values()}
    assert modalities <= set(LEARNT_RULES)


def test_only_the_models_ood_standardise_names_have_their_features_standardised():
    from vapm.config.settings import OodSettings, load_settings

    assert OodSettings().scale("vision_transfer") == "raw"
    shipped = load_settings(REPO_ROOT / "params.yaml").ood
    assert [model for model in load_registry(REPO_ROOT / "models.yaml") if shipped.scale(model) == "standardised"] \
        == ["vision_transfer"]
