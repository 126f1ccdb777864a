"""Data, from raw archives to features: safe ingest of the zip archives (`ingest`), synthetic stand-in archives
(`synth`), the features the models train on and the records that reproduce them on one raw file (`features`),
and the book's pictures of the data (`explore`).

May import: vapm.core, vapm.config.
"""
