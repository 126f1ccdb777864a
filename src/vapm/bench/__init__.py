"""Benchmarks, the one home for them: the pipeline's wall time (`pipeline`, `python -m vapm.bench`), epochs
against the CPU's roofline and profiles (`roofline`), the book's own code as a baseline (`book_baseline`), the
folder monitor (`monitor`), DVC's experiment queue (`queue`), the determinism pins' cost (`determinism_cost`) and
transfer learning on the real NEU images (`efficientnet_neu`).

They observe the product through its hooks (`keras_fit.observing_fits`, `keras_fit.fitting_with`), never by
patching it. Nothing in the product imports them, and the logged MLflow models do not carry them.
"""
