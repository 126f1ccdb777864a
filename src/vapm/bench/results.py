"""The pipeline benchmark's results as a JSON document and a Markdown table (stage times, peak memory, epochs
against the roofline, vapm against the book's code)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vapm.evaluation.crossval import read_summary


def markdown_table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result.get("stages"):
        lines += ["| stage | wall time (s) | peak memory (MB) |", "|---|---:|---:|"]
        for stage, timing in result["stages"].items():
            lines.append(f"| {stage} | {timing['wall_s']:.1f} | {timing['peak_rss_mb']:.0f} |")
        lines.append(f"| **whole pipeline** | **{result['total_wall_s']:.1f}** | |")
        if "crossval_timing" in result:
            timing = result["crossval_timing"]
            lines.append(f"| k-fold evaluation (not part of the pipeline) | {timing['wall_s']:.1f} | "
                         f"{timing['peak_rss_mb']:.0f} |")
        lines += ["", "| model | test accuracy | 95 % CI | macro-F1 | n test |", "|---|---:|---|---:|---:|"]
        for model, metrics in result["metrics"].items():
            if "acc" not in metrics:
                lines.append(f"| {model} | (detector: {', '.join(f'{k} {v:.3g}' for k, v in metrics.items() if isinstance(v, (int, float)))}) | | | |")
                continue
            lines.append(f"| {model} | {100 * metrics['acc']:.2f} % | "
                         f"{100 * metrics['acc_lo']:.1f}-{100 * metrics['acc_hi']:.1f} % | "
                         f"{metrics['f1']:.4f} | {metrics['n']} |")
        for model, document in result.get("crossval", {}).items():
            cv = read_summary(document, model)
            lines.append(f"| {model}, {cv['folds']}-fold CV | {100 * cv['accuracy_mean']:.2f} % ± "
                         f"{100 * cv['accuracy_sd']:.2f} | | {cv['macro_f1_mean']:.4f} ± {cv['macro_f1_sd']:.4f} | "
                         f"{cv['n_items']} |")
    if "monitor" in result:
        from vapm.bench.monitor import markdown as monitor_markdown

        lines += ["", monitor_markdown(result["monitor"]).rstrip("\n")]
    lines += roofline_markdown(result.get("roofline"))
    for kind, title in (("book", "the book's training loop"), ("before", "vapm before this change (Keras's Adam)")):
        if kind in result:
            lines += comparison_markdown(result[kind], title)
    return "\n".join(lines) + "\n"


def roofline_markdown(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    peak = section["peak_spread"]
    lines = ["", f"Matmul peak (fp32, {section['threads']} threads, best of {len(section['peak_runs'])} runs): "
                 f"**{section['peak_gflops']:.1f} GFLOP/s** (best per run: median {peak['median']:.1f}, "
                 f"{peak['min']:.1f}-{peak['max']:.1f}); per CPU-second: "
                 f"{section['peak_gflops_per_cpu_second']:.1f} GFLOP", "",
             "| model | phase | TFLOP / epoch | epoch (s), median (min-max) | GFLOP/s | % of peak | "
             "% of peak, CPU basis | CPU share |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in section["rows"]:
        s = row["epoch_s"]
        lines.append(f"| {row['model']} | {row['phase']} | {row['epoch_tflop']:.3f} | {s['median']:.2f} "
                     f"({s['min']:.2f}-{s['max']:.2f}, n={s['n']}) | {row['gflops']:.1f} | "
                     f"{row['percent_of_peak']:.0f} % | {row['percent_of_peak_cpu_basis']:.0f} % | "
                     f"{row['cpu_share']:.2f} |")
    for name, reason in section.get("not_measured", {}).items():
        lines.append(f"| {name} | not measured: {reason} | | | | | | |")
    return lines


def comparison_markdown(section: dict[str, Any], title: str) -> list[str]:
    lines = ["", f"Per-epoch time of {title} / vapm's (> 1: vapm is faster), median of the pairs (min-max):", "",
             "| model | phase | ratio | spread | pairs | whole run ratio | load average |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, summary in section.items():
        if name == "no_book_loop":
            continue
        for phase, stats in summary["phases"].items():
            whole = summary["whole_run"]
            load = summary["load_average"]
            lines.append(f"| {name} | {phase} | **{stats['median']:.2f}x** | {stats['min']:.2f}-{stats['max']:.2f} | "
                         f"{stats['n']} | {whole['median']:.2f}x | {load['min']:.1f}-{load['max']:.1f} |")
    if section.get("no_book_loop"):
        lines.append(f"| {', '.join(section['no_book_loop'])} | no book loop (not Keras classifiers of the book) | | | | | |")
    return lines


def write_results(result: dict[str, Any], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    out.with_suffix(".md").write_text(markdown_table(result))


def write_report(out: Path, results: dict[str, Any], markdown: str) -> None:
    """OUT.json and OUT.md of a benchmark command, and the table on the console."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
