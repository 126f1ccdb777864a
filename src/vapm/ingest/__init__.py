"""The ingest stage's library: safe reading of the raw zip archives into data/interim/.

`ingest_vision` / `ingest_acoustic` turn one archive into a manifest plus decoded data and return the
dataset's report; modules: `archive` (safe zip reading), `labels` (class and split from member paths),
`decode` (images and clips), `text_values` (.dat text), `formats` (what content and names say),
`limits` (per-member limits), `dataset` (dedupe, split, outputs), `parallel`, `npy_stream`.
"""
from vapm.ingest.archive import ArchiveError, display_name
from vapm.ingest.dataset import (ACOUSTIC_COLUMNS, VISION_COLUMNS, IngestError, IngestSettings,
                                 audio_target_from_params, classes_from_params, ingest_acoustic, ingest_vision,
                                 n_jobs_from_params, settings_from_params)
from vapm.ingest.decode import AudioTarget, DecodeError, decode_audio, decode_image, parse_text_values
from vapm.ingest.errors import BadFile, MemberError
from vapm.ingest.limits import IngestLimits, limits_from_params

__all__ = [
    "ACOUSTIC_COLUMNS", "VISION_COLUMNS", "ArchiveError", "AudioTarget", "BadFile", "DecodeError", "IngestError",
    "IngestLimits", "IngestSettings", "MemberError", "audio_target_from_params", "classes_from_params",
    "decode_audio", "decode_image", "display_name", "ingest_acoustic", "ingest_vision", "limits_from_params",
    "n_jobs_from_params", "parse_text_values", "settings_from_params",
]
