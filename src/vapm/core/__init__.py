"""What every layer may use: vapm's error type and the stage wrapper that prints one line (`errors`), progress
bars (`progress`), file digests (`hashing`), nested-mapping helpers (`mappings`).

May import: the standard library and third-party packages only.
"""
