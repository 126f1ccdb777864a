"""The ingest stage's library: safe reading of the raw zip archives into data/interim/.

`vapm.data.ingest.dataset.ingest_vision` / `ingest_acoustic` turn one archive into a manifest plus decoded data and return the
dataset's report; modules: `archive` (safe zip reading), `labels` (class and split from member paths),
`decode` (images and clips), `text_values` (.dat text), `formats` (what content and names say),
`limits` (per-member limits), `dataset` (one archive: find, dedupe, decode, write), `manifest` (splits and
manifest rows), `report` (the ingest report), `parallel`, `npy_stream`, `errors`.
Nothing is imported here, so that decoding one file (predict, the served model) loads only what it uses.
"""
