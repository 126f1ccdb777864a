"""Preprocessing records: the settings that turn a raw file into a model's input, as one object.

Featurize builds each record from params.yaml, computes the features with it and writes it beside
them (`data/features/<kind>/record.json`); a trainer copies it into the model's saved record; predict,
the served model and the monitor rebuild it from there and put a new file through exactly the same
steps (`record.prepare(name, data)`), whatever params.yaml says today.
"""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from vapm.core.errors import VapmError
from vapm.data.input_checks import ClipLimits, ImageLimits, clip_reasons, image_reasons

RECORD_FILE = "record.json"


class RecordError(VapmError, ValueError):
    """A saved preprocessing record is missing or unreadable, or cannot prepare raw files."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def modality(self) -> str:
        raise NotImplementedError

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """One raw file's bytes -> what the cheap input checks look at: the clip as ingest decodes it, or the grey
        image at the model's size."""
        raise NotImplementedError

    def from_decoded(self, decoded: np.ndarray) -> np.ndarray:
        """The decoded item -> the model input (this feature's steps)."""
        raise NotImplementedError

    def input_reasons(self, decoded: np.ndarray) -> list[str]:
        """Why the decoded item is unfit to be classified (vapm.data.input_checks), with the limits featurize
        fitted on the training data; records written before those existed use the shipped limits."""
        return []

    def prepare(self, name: str, data: bytes) -> np.ndarray:
        """One raw file's bytes -> one model input (ingest's decoding, then this feature's steps)."""
        return self.from_decoded(self.decode(name, data))

    def prepare_many(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        return np.stack([self.prepare(name, data) for name, data in files])


class AudioInput(BaseModel):
    """How ingest turns a recording into a clip: mono, resampled, padded/trimmed to `clip_samples`."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    sample_rate: float
    clip_samples: int
    length_tolerance: float

    def clip(self, name: str, data: bytes) -> np.ndarray:
        from vapm.data.ingest.decode import AudioTarget, decode_audio

        target = AudioTarget(self.sample_rate, self.clip_samples, self.length_tolerance)
        return decode_audio(name, data, target).samples


class ClipRecord(_Record):
    """The ingested clip itself: decoded, mono, resampled, padded/trimmed (models that make their own features)."""
    kind: Literal["clip"] = "clip"
    audio: AudioInput

    @property
    def modality(self) -> str:
        return "audio"

    def decode(self, name: str, data: bytes) -> np.ndarray:
        return self.audio.clip(name, data)

    def from_decoded(self, decoded: np.ndarray) -> np.ndarray:
        return decoded


class _FromClip(_Record):
    """A feature computed from the decoded clip, with the clip limits of its training data."""
    checks: ClipLimits | None = None  # fitted by featurize; None in records written before the checks existed

    def decode(self, name: str, data: bytes) -> np.ndarray:
        return self.audio.clip(name, data)  # type: ignore[attr-defined]

    def from_decoded(self, decoded: np.ndarray) -> np.ndarray:
        return self.from_clip(decoded)

    def from_clip(self, clip: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def input_reasons(self, decoded: np.ndarray) -> list[str]:
        return clip_reasons(decoded, self.checks or ClipLimits())


class ImageRecord(_Record):
    """Grey (luminance), made square as `resize` says and resized to `image_size` with Lanczos, uint8; the models
    scale pixels themselves."""
    kind: Literal["image"] = "image"
    image_size: int
    resize: Literal["squash", "pad", "crop"] = "squash"  # records written before vision.resize existed squashed
    checks: ImageLimits | None = None  # fitted by featurize; None in records written before the checks existed

    @property
    def modality(self) -> str:
        return "vision"

    def from_grey(self, image: np.ndarray) -> np.ndarray:
        from vapm.data.features.vision import resize_image

        return resize_image(image, self.image_size, self.resize)

    def decode(self, name: str, data: bytes) -> np.ndarray:
        from vapm.data.ingest.decode import decode_image

        return self.from_grey(decode_image(data, member_name=name))

    def from_decoded(self, decoded: np.ndarray) -> np.ndarray:
        return decoded

    def input_reasons(self, decoded: np.ndarray) -> list[str]:
        return image_reasons(decoded, self.checks or ImageLimits())


class AcousticImageRecord(_FromClip):
    """MFCC rows on top of log-mel (dB) rows, float32 (n_mfcc + n_mels, frames), from one centred STFT."""
    kind: Literal["acoustic_image"] = "acoustic_image"
    audio: AudioInput
    n_mfcc: int
    n_mels: int
    mfcc_mel_bands: int           # the mel bands the MFCCs are computed from (the book: librosa's 128)
    n_fft: int
    hop_length: int
    fmax: float
    remove_dc: bool

    @property
    def modality(self) -> str:
        return "audio"

    @property
    def shape(self) -> tuple[int, int]:
        from vapm.data.features.acoustic import acoustic_frame_count

        return self.n_mfcc + self.n_mels, acoustic_frame_count(self.audio.clip_samples, self.hop_length)

    def from_clip(self, clip: np.ndarray) -> np.ndarray:
        from vapm.data.features.acoustic import mfcc_logmel_image

        return mfcc_logmel_image(clip, self.audio.sample_rate, self.n_mfcc, self.n_mels, self.n_fft,
                                 self.hop_length, self.fmax, self.remove_dc, self.mfcc_mel_bands)


class WaveletRecord(_FromClip):
    """Mean square (log10 or linear) of every wavelet-packet node, levels 1..level, in frequency order."""
    kind: Literal["wavelet"] = "wavelet"
    audio: AudioInput
    wavelet: str
    level: int
    mode: str
    energy: Literal["log", "linear"]
    remove_dc: bool

    @property
    def modality(self) -> str:
        return "audio"

    @property
    def feature_names(self) -> list[str]:
        from vapm.data.features.acoustic import wavelet_feature_names

        return wavelet_feature_names(self.level)

    def from_clip(self, clip: np.ndarray) -> np.ndarray:
        from vapm.data.features.acoustic import wavelet_packet_energies

        return wavelet_packet_energies(clip, self.wavelet, self.level, self.mode, self.energy, self.remove_dc)


class ExternalFeaturesRecord(_Record):
    """Features read from a table someone else computed: raw files cannot be turned into them here."""
    kind: Literal["external"] = "external"
    source: str
    feature_names: list[str]
    description: str

    @property
    def modality(self) -> str:
        return "audio"

    def decode(self, name: str, data: bytes) -> np.ndarray:
        raise RecordError(f"{name}: this model was trained on features from {self.source} ({self.description}); "
                          "vapm cannot compute them from a raw file. Retrain it on vapm's own features "
                          "(acoustic_svm.features_csv: null) to classify recordings")


InputRecord = Annotated[Union[ClipRecord, ImageRecord, AcousticImageRecord, WaveletRecord, ExternalFeaturesRecord],
                        Field(discriminator="kind")]
_RECORD_ADAPTER = TypeAdapter(InputRecord)


def record_from_dict(data: Any, source: str = "record") -> InputRecord:
    try:
        return _RECORD_ADAPTER.validate_python(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        raise RecordError(f"{source}: not a vapm preprocessing record ({where}: {first['msg']}); "
                          "retrain the model with this version of vapm") from None


def audio_input(settings) -> AudioInput:
    return AudioInput(sample_rate=settings.audio.sample_rate, clip_samples=settings.audio.clip_samples,
                      length_tolerance=settings.audio.length_tolerance)


def clip_record(settings) -> ClipRecord:
    return ClipRecord(audio=audio_input(settings))


def image_record(settings) -> ImageRecord:
    return ImageRecord(image_size=settings.vision.image_size, resize=settings.vision.resize)


def acoustic_image_record(settings) -> AcousticImageRecord:
    f = settings.featurize
    return AcousticImageRecord(audio=audio_input(settings), n_mfcc=f.n_mfcc, n_mels=f.n_mels,
                               mfcc_mel_bands=f.mfcc_mel_bands or f.n_mels, n_fft=f.n_fft,
                               hop_length=f.hop_length, fmax=f.fmax or settings.audio.sample_rate / 2,
                               remove_dc=f.remove_dc)


def wavelet_record(settings) -> WaveletRecord:
    f = settings.featurize
    return WaveletRecord(audio=audio_input(settings), wavelet=f.wavelet, level=f.wavelet_level,
                         mode=f.wavelet_mode, energy=f.wavelet_energy, remove_dc=f.remove_dc)


def write_record(folder: str | Path, record: InputRecord) -> Path:
    path = Path(folder) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_record(folder: str | Path) -> InputRecord:
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        raise RecordError(f"{path} not found: run the featurize stage first (dvc repro featurize)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RecordError(f"{path} is not valid JSON: {err}") from None
    return record_from_dict(data, str(path))


def raw_suffixes(record: InputRecord) -> tuple[str, ...]:
    """File-name endings the record can prepare (for predict's and the monitor's messages)."""
    from vapm.data.ingest.labels import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS if record.modality == "vision" else AUDIO_EXTENSIONS


def suffix_of(name: str) -> str:
    return PurePosixPath(name).suffix.lower()
