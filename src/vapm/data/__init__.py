"""Data, from raw archives to features: safe ingest of the zip archives (`ingest`), synthetic stand-in archives
(`synth`), the features the models train on and the records that reproduce them on one raw file (`features`),
the book's pictures of the data (`explore`), and shifted copies of test images and clips that a classifier should
flag as unfamiliar (`shifts`).

May import: vapm.core, vapm.config.
"""
