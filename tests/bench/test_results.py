"""The benchmark's Markdown table shows `vapm crossval`'s files as written (mean ± sample sd per model)."""
from __future__ import annotations

from vapm.bench.results import markdown_table
from vapm.evaluation.crossval import metrics_document, summarize


def test_crossval_rows_read_the_metrics_files_as_written():
    per_fold = [{"accuracy": a, "balanced_accuracy": a, "macro_f1": a - 0.01} for a in (0.96, 1.0, 0.98)]
    result = {"stages": {"ingest": {"wall_s": 1.0, "peak_rss_mb": 100.0}}, "total_wall_s": 1.0,
              "metrics": {"toy": {"acc": 0.5, "acc_lo": 0.4, "acc_hi": 0.6, "f1": 0.5, "n": 10}},
              "crossval": {"toy": metrics_document("toy", summarize(per_fold, n_items=30))}}
    assert "| toy, 3-fold CV | 98.00 % ± 2.00 | | 0.9700 ± 0.0200 | 30 |" in markdown_table(result)
