"""params.yaml parsed once into typed, validated settings.

`load_settings()` checks every section (and every registered model's section, with the `Params`
class of its trainer) and reports every bad value at once, each with its dotted name and what is
allowed, in one `ParamsError`. Stages read typed attributes (`settings.ingest.on_bad_file`), never
raw dicts.
"""
from __future__ import annotations

import copy
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from vapm.core.errors import VapmError

PARAMS_FILE = Path("params.yaml")


DEFAULT_MIN_SOURCE_RATE = 4000.0  # below any real recorder's rate (telephone audio is 8 kHz)

class ParamsError(VapmError, ValueError):
    """params.yaml is missing, unreadable, or holds values the pipeline cannot use."""


class Section(BaseModel):
    """A params.yaml section: unknown keys are typos, and "10" is not a number."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _rate(value: Any) -> float:
    """Sample rates may be written as numbers or exact fractions such as '50000/3'."""
    if isinstance(value, bool):
        raise ValueError("must be a number of Hz or a fraction like 50000/3")
    try:
        rate = float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise ValueError("must be a number of Hz or a fraction like 50000/3") from None
    if rate <= 0:
        raise ValueError("must be positive")
    return rate


SampleRate = Annotated[float, BeforeValidator(_rate)]
PositiveInt = Annotated[int, Field(ge=1)]
Fraction01 = Annotated[float, Field(gt=0, lt=1)]


def _class_list(names: list[str]) -> list[str]:
    if any(not name.strip() for name in names):
        raise ValueError("class names must not be empty")
    if len({name.lower() for name in names}) != len(names):
        raise ValueError("names a class twice (class folders match regardless of case)")
    return names


ClassList = Annotated[list[str], Field(min_length=2)]
AUTO = "auto"  # classes: auto takes the class names from the archive (sorted), at ingest
ClassesParam = ClassList | Literal["auto"]
RESIZE_MODES = ("squash", "pad", "crop")


def _member_pattern(pattern: str | None, groups: tuple[str, ...]) -> str | None:
    """A regular expression over archive member paths, with the named groups it must define."""
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"is not a valid regular expression: {err}") from None
    missing = [group for group in groups if group not in compiled.groupindex]
    if missing:
        raise ValueError("needs the named group(s) " + ", ".join(f"(?P<{group}>...)" for group in missing)
                         + " that say(s) which part of the path is the " + " and the ".join(missing))
    return pattern


# tcp:// or tls://, a host name or IPv4 address (or [IPv6]), and a port.
SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$")


def check_address(address: str) -> str:
    """`address` if it is a Dask scheduler address (tcp://host:port or tls://host:port), else ValueError."""
    match = SCHEDULER_ADDRESS.match(address.strip())
    if match is None or not 1 <= int(match.group(4)) <= 65535:
        raise ValueError("is not a Dask scheduler address such as tcp://127.0.0.1:8786 (tcp:// or tls://, a host "
                         "and a port 1-65535)")
    return address.strip()


class ComputeSettings(Section):
    threads: int = Field(2, ge=1, le=256)
    # A Dask scheduler (tcp://host:port) for ingest's decoding, featurize and the k-fold folds; None: local
    # processes ($DASK_SCHEDULER_ADDRESS then decides). It never changes a result (vapm.config.compute).
    scheduler: str | None = None

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_address(value)


def _classes(value: list[str] | str) -> list[str] | str:
    return value if value == AUTO else _class_list(value)


class VisionSettings(Section):
    classes: ClassesParam
    image_size: int = Field(ge=8, le=2048)
    resize: Literal["squash", "pad", "crop"] = "squash"  # how a non-square image becomes a square one

    _check_classes = field_validator("classes")(_classes)


class AudioSettings(Section):
    classes: ClassesParam
    sample_rate: SampleRate
    clip_seconds: float = Field(gt=0, le=600)
    length_tolerance: float = Field(ge=0, lt=1)
    min_source_rate: SampleRate = Field(DEFAULT_MIN_SOURCE_RATE, gt=0)  # recordings below this rate are bad files

    _check_classes = field_validator("classes")(_classes)

    @property
    def clip_samples(self) -> int:
        """Samples of every decoded clip: sample_rate x clip_seconds, rounded."""
        return int(round(self.sample_rate * self.clip_seconds))

    @model_validator(mode="after")
    def _some_samples(self) -> "AudioSettings":
        if self.clip_samples < 1:
            raise ValueError("sample_rate x clip_seconds gives no samples per clip")
        return self


class SampleDataSettings(Section):
    out_dir: str
    image_size: int = Field(ge=16, le=1024)
    train_per_class: PositiveInt
    test_per_class: int = Field(ge=0)
    clips_per_class: PositiveInt
    anomaly_normal_class: str = "Normal"
    anomaly_defect_train: PositiveInt = 2


MAX_LIMIT_MB = float(2**40)
DEFAULT_MAX_TOTAL_DECODED_MB = 1024.0
PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # Pillow refuses more itself, before our check could name the limit


class IngestConfig(Section):
    vision_archive: str = Field(min_length=1)
    acoustic_archive: str = Field(min_length=1)
    # At most 2**40 MiB (1 EiB): beyond, the limits' byte counts overflow a float (1e308 MB did, with a traceback).
    max_uncompressed_mb: float = Field(gt=0, le=MAX_LIMIT_MB, allow_inf_nan=False)
    max_member_mb: float = Field(gt=0, le=MAX_LIMIT_MB, allow_inf_nan=False)
    max_total_decoded_mb: float = Field(DEFAULT_MAX_TOTAL_DECODED_MB, gt=0, le=MAX_LIMIT_MB, allow_inf_nan=False)
    report_examples: int = Field(20, ge=1, le=1000)
    max_image_pixels: int = Field(ge=1, le=PILLOW_MAX_IMAGE_PIXELS)
    max_source_samples: int = Field(ge=1)
    on_bad_file: Literal["fail", "skip"]
    test_fraction: Fraction01
    n_jobs: int = Field(ge=1, le=64)
    # Published layouts: a regular expression over each member path whose named group `class` is the class;
    # members it does not match are ignored (and counted in the report). None: the built-in layouts.
    vision_pattern: str | None = None
    audio_pattern: str | None = None
    vision_mask_pattern: str | None = None   # defect masks: groups `class` and `stem` (the image's file stem)

    @field_validator("vision_pattern", "audio_pattern")
    @classmethod
    def _class_pattern(cls, pattern: str | None) -> str | None:
        return _member_pattern(pattern, ("class",))

    @field_validator("vision_mask_pattern")
    @classmethod
    def _mask_pattern(cls, pattern: str | None) -> str | None:
        return _member_pattern(pattern, ("class", "stem"))


class AnomalyDataSettings(Section):
    """The anomaly_data stage: one image archive (a normal class beside defect classes, defect masks optional) read
    like ingest reads the NEU archive, then made square at its own size: the anomaly detectors' images and masks."""
    archive: str = Field("data/sample/NEU-anomaly.zip", min_length=1)
    classes: ClassesParam = AUTO
    pattern: str | None = None         # as ingest.vision_pattern; None: the built-in layouts
    mask_pattern: str | None = None    # as ingest.vision_mask_pattern; None: no masks
    image_size: int = Field(224, ge=8, le=2048)
    resize: Literal["squash", "pad", "crop"] = "squash"

    _check_classes = field_validator("classes")(_classes)
    _check_pattern = field_validator("pattern")(lambda pattern: _member_pattern(pattern, ("class",)))
    _check_mask_pattern = field_validator("mask_pattern")(lambda pattern: _member_pattern(pattern, ("class", "stem")))


class FeaturizeSettings(Section):
    n_mfcc: PositiveInt
    n_mels: PositiveInt
    mfcc_mel_bands: PositiveInt | None = None   # None: the MFCCs come from the n_mels log-mel rows
    n_fft: int = Field(ge=16)
    hop_length: PositiveInt
    fmax: float | None = Field(gt=0)
    wavelet: str
    wavelet_level: int = Field(ge=1, le=12)
    wavelet_mode: str
    wavelet_energy: Literal["log", "linear"]
    remove_dc: bool
    n_jobs: int = Field(ge=1, le=64)

    @model_validator(mode="after")
    def _mfcc_from_mels(self) -> "FeaturizeSettings":
        bands = self.mfcc_mel_bands or self.n_mels
        if self.n_mfcc > bands:
            raise ValueError(f"n_mfcc ({self.n_mfcc}) cannot exceed the {bands} mel bands they are computed from "
                             "(mfcc_mel_bands, or n_mels): the MFCCs are the DCT of the mel bands")
        return self

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, name: str) -> str:
        import pywt

        if name not in pywt.wavelist(kind="discrete"):
            raise ValueError("is not a discrete PyWavelets wavelet (e.g. db4, sym5, coif2)")
        return name

    @field_validator("wavelet_mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        import pywt

        if mode not in pywt.Modes.modes:
            raise ValueError(f"must be one of {pywt.Modes.modes}")
        return mode


class MlflowSettings(Section):
    experiment: str = Field(min_length=1)
    champion_tolerance: float = Field(0.0, ge=0, le=1)  # a new version becomes champion unless it is worse by more
    # the test score a classifier's champion alias compares (a detector: AUC); see vapm.tracking.promotion
    champion_metric: Literal["accuracy", "balanced_accuracy", "macro_f1"] = "macro_f1"


class TrainSettings(Section):
    """How a neural model is fitted: the shared `train` section, or it merged with a model's overrides."""
    epochs: PositiveInt
    batch_size: int = Field(ge=1, le=65536)
    learning_rate: float = Field(gt=0, le=10)
    validation_fraction: float = Field(ge=0, lt=1)
    early_stopping_patience: int = Field(ge=0)
    reduce_lr_patience: int = Field(ge=0)
    reduce_lr_factor: Fraction01
    class_weight: Literal["balanced", "none"] = "none"  # balanced: each class's loss weighs n / (k x its count)
    # constant: learning_rate throughout (cut on plateaus by reduce_lr_patience); cosine: one epoch of linear
    # warm-up from learning_rate / 10, then a cosine decay to learning_rate / 100 at the last epoch
    lr_schedule: Literal["constant", "cosine"] = "constant"
    label_smoothing: float = Field(0.0, ge=0, lt=1)   # targets (1 - s) on the class, s / k spread over all k

    @model_validator(mode="after")
    def _watchers_need_validation(self) -> "TrainSettings":
        watching = self.early_stopping_patience > 0 or self.reduce_lr_patience > 0
        if watching and self.validation_fraction == 0:
            raise ValueError("early stopping and the learning-rate schedule watch val_loss: set "
                             "validation_fraction > 0, or their patience to 0")
        if self.lr_schedule == "cosine" and self.reduce_lr_patience > 0:
            raise ValueError("lr_schedule: cosine sets the learning rate of every step; cutting it on plateaus "
                             "as well cannot apply: set reduce_lr_patience to 0, or lr_schedule to constant")
        return self


class TrainOverrides(Section):
    """A model's `train:` mapping: null keeps the shared `train` value."""
    epochs: PositiveInt | None = None
    batch_size: int | None = Field(None, ge=1, le=65536)
    learning_rate: float | None = Field(None, gt=0, le=10)
    validation_fraction: float | None = Field(None, ge=0, lt=1)
    early_stopping_patience: int | None = Field(None, ge=0)
    reduce_lr_patience: int | None = Field(None, ge=0)
    reduce_lr_factor: Fraction01 | None = None
    class_weight: Literal["balanced", "none"] | None = None
    lr_schedule: Literal["constant", "cosine"] | None = None
    label_smoothing: float | None = Field(None, ge=0, lt=1)


# The learnt rules an answer passes, per modality: an image meets featurize's polarity and likeness checks
# (vapm.data.image_polarity) and its classifier's feature distance; a clip meets the distance alone (the clip
# checks have fixed limits, which familiar clips pass).
LEARNT_RULES = {"vision": 3, "audio": 1}


class OodSettings(Section):
    """How each classifier tells an unfamiliar input (vapm.models.components.unfamiliar): the distance of its
    features to the training data, flagged above a threshold that familiar items exceed at a set rate.

    `false_flag_rate` is the share of familiar inputs an answer may be flagged for in all: each learnt rule the
    answer passes flags its equal part of it (`rule_rate`), so that together, whichever flags, they flag at most
    that share (their union flags at most the sum of their shares)."""
    false_flag_rate: float = Field(0.01, gt=0, lt=0.5)
    method: Literal["mahalanobis", "knn"] = "knn"
    k: int = Field(5, ge=1, le=1000)        # neighbours, for method knn
    folds: int = Field(5, ge=2, le=20)      # out-of-fold scores of the training items set the threshold
    # per model: layers whose per-channel mean and std join the penultimate layer as further feature groups
    layers: dict[str, list[str]] = Field(default_factory=dict)
    # models whose features are each centred and divided by their training spread before the distance (the rest
    # are scored as the model gives them)
    standardise: list[str] = Field(default_factory=list)

    def scale(self, model: str) -> str:
        """How `model`'s features are scaled before the distance (vapm.models.components.unfamiliar.SCALES)."""
        return "standardised" if model in self.standardise else "raw"

    def rule_rate(self, modality: str) -> float:
        """The false-flag rate of each learnt rule an answer of `modality` (vision, audio) passes."""
        return self.false_flag_rate / LEARNT_RULES.get(modality, 1)


class CrossvalSettings(Section):
    folds: int = Field(ge=2, le=100)
    models: list[str] = Field(min_length=1)    # registered classifiers `vapm crossval` evaluates by default
    jobs: int = Field(1, ge=1, le=64)          # folds trained at once, each in its own process (`-j` overrides)


class ModelParams(Section):
    """Base of every model's params section (a trainer's `Params`)."""


class Settings(Section):
    seed: int = Field(ge=0, le=2**32 - 1)
    compute: ComputeSettings = ComputeSettings()
    vision: VisionSettings
    audio: AudioSettings
    sample_data: SampleDataSettings
    ingest: IngestConfig
    featurize: FeaturizeSettings
    anomaly_data: AnomalyDataSettings = AnomalyDataSettings()
    mlflow: MlflowSettings
    train: TrainSettings
    crossval: CrossvalSettings
    ood: OodSettings = OodSettings()
    models: dict[str, ModelParams] = Field(default_factory=dict)  # filled from the registry's sections

    @model_validator(mode="after")
    def _fmax_below_nyquist(self) -> "Settings":
        nyquist = self.audio.sample_rate / 2
        if self.featurize.fmax is not None and self.featurize.fmax > nyquist:
            raise ValueError(f"featurize.fmax ({self.featurize.fmax:g} Hz) is above half of audio.sample_rate "
                             f"({nyquist:g} Hz)")
        return self

    def model(self, name: str) -> Any:
        """A registered model's validated params section (an instance of its trainer's `Params`)."""
        if name not in self.models:
            raise ParamsError(f"params.yaml has no section for model {name!r}; every model in models.yaml "
                              "needs one, named after it")
        return self.models[name]

    def train_for(self, name: str) -> TrainSettings:
        """The shared `train` section with the model's own `train:` overrides applied."""
        overrides = getattr(self.model(name), "train", None)
        if overrides is None:
            return self.train
        changes = {key: value for key, value in overrides.model_dump().items() if value is not None}
        try:
            return TrainSettings(**{**self.train.model_dump(), **changes})
        except ValidationError as err:
            raise ParamsError(_one_line(err, prefix=f"{name}.train")) from None

    def classes(self, modality: str) -> list[str] | None:
        """The class list params give, or None for `auto` (the names then come from the archive, at ingest)."""
        classes = self.vision.classes if modality == "vision" else self.audio.classes
        return None if classes == AUTO else list(classes)


GENERAL_SECTIONS = [name for name in Settings.model_fields if name != "models"]


def _dotted(location: tuple[Any, ...], prefix: str) -> str:
    parts = [str(part) for part in location if not str(part).startswith("function-")]
    return ".".join([prefix, *parts] if prefix else parts) or "params.yaml"


def one_line_problems(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line naming every bad value by its dotted key."""
    return _one_line(err, prefix)


def _one_line(err: ValidationError, prefix: str = "") -> str:
    problems = []
    for issue in err.errors(include_url=False):
        where = _dotted(issue["loc"], prefix)
        message = issue["msg"].removeprefix("Value error, ")
        if issue["type"] == "extra_forbidden":
            message = "unknown key (a typo? params.yaml lists every key)"
        elif issue["type"] == "missing":
            message = "missing"
        shown = "" if issue["type"] in ("missing", "extra_forbidden") else f" (got {issue['input']!r})"
        problems.append(f"{where}: {message[:1].lower()}{message[1:]}{shown}")
    return "params.yaml: " + "; ".join(problems)


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stages from the repository root")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def parse_settings(params: dict[str, Any], model_params: dict[str, type[ModelParams] | None]) -> Settings:
    """Validate a params mapping; `model_params` maps each registered model to its `Params` class (None: the
    section is not checked here, only required to exist)."""
    params = copy.deepcopy(params)
    general = {key: value for key, value in params.items() if key not in model_params}
    problems: list[str] = []
    sections: dict[str, ModelParams] = {}
    for name, params_class in model_params.items():
        if name not in params:
            problems.append(f"{name}: missing (every model in models.yaml needs a params section named after it)")
        elif params_class is not None:
            try:
                sections[name] = params_class.model_validate(params[name])
            except ValidationError as err:
                problems.append(_one_line(err, prefix=name).removeprefix("params.yaml: "))
    try:
        settings = Settings.model_validate(general)
    except ValidationError as err:
        problems.insert(0, _one_line(err).removeprefix("params.yaml: "))
        settings = None
    if problems:
        raise ParamsError("params.yaml: " + "; ".join(problems))
    return settings.model_copy(update={"models": sections})


def load_settings(path: str | Path = PARAMS_FILE, models: Iterable[str] | None = None,
                  registry_path: str | Path | None = None) -> Settings:
    """params.yaml validated: every general section, and the sections of `models` (default: every model of
    the registry) with their trainers' `Params`. Raises one ParamsError listing every bad value."""
    from vapm.config.model_registry import REGISTRY_FILE, load_registry

    registry = load_registry(registry_path or REGISTRY_FILE)
    checked = set(registry) if models is None else set(models)
    unknown = checked - set(registry)
    if unknown:
        from vapm.config.model_registry import RegistryError

        raise RegistryError(f"no model {sorted(unknown)} in models.yaml; registered: {', '.join(registry)}")
    return parse_settings(read_params(path), {name: entry.params_class() if name in checked else None
                                              for name, entry in registry.items()})
