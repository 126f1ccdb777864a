"""Small synthetic stand-ins for the NEU steel-defect and air-compressor archives.

They share the real archives' layouts and formats, so the whole pipeline runs its real code path
on them in seconds, without downloading anything.
"""
from vapm.data.synth.acoustic import build_acoustic_archive, render_clip
from vapm.data.synth.archive import BuiltArchive, write_zip
from vapm.data.synth.vision import build_anomaly_archive, build_vision_archive, render_defect

__all__ = ["BuiltArchive", "build_acoustic_archive", "build_anomaly_archive", "build_vision_archive", "render_clip",
           "render_defect", "write_zip"]
