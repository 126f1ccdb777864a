"""The ingest stage's library: safe reading of the raw zip archives into data/interim/.

`ingest_vision` / `ingest_acoustic` turn one archive into a manifest plus decoded data and return the
dataset's report; modules: `archive` (safe zip reading), `labels` (class and split from member paths),
`decode` (images and clips), `dataset` (dedupe, split, outputs), `parallel`, `npy_stream`.
"""
from vapm.ingest.archive import ArchiveError
from vapm.ingest.dataset import (ACOUSTIC_COLUMNS, VISION_COLUMNS, IngestError, IngestSettings,
                                 audio_target_from_params, classes_from_params, ingest_acoustic, ingest_vision,
                                 settings_from_params)
from vapm.ingest.decode import AudioTarget, DecodeError, decode_audio, decode_image, parse_text_values

__all__ = [
    "ACOUSTIC_COLUMNS", "VISION_COLUMNS", "ArchiveError", "AudioTarget", "DecodeError", "IngestError",
    "IngestSettings", "audio_target_from_params", "classes_from_params", "decode_audio", "decode_image",
    "ingest_acoustic", "ingest_vision", "parse_text_values", "settings_from_params",
]
