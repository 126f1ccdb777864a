"""The retraining report: what a change did to the models, against a base git ref.

    vapm report --base main            # writes reports/report.md and reports/report.html
    make report BASE=main

The base side is read from git (`git show <ref>:<path>`), the other side from the workspace, so it works in
any clone, after `dvc repro`, without a DVC remote or a CI vendor. For each model: accuracy (with its 95 %
interval), macro-F1 and balanced accuracy before and after, and the majority-class baseline; when both sides scored the same test items (same data manifest and the
same files), an exact McNemar test on the paired predictions, else a note that the test sets differ and only
the intervals can be compared. Where `vapm crossval` wrote metrics/crossval/<model>.json, each model's k-fold
mean ± standard deviation of accuracy, balanced accuracy and macro-F1. Then the params that changed, confusion matrices and training curves side by
side, stage times where MLflow recorded them, and the data manifest hashes of both sides. The HTML page is
self-contained (pictures embedded, no scripts, no CDN): it renders offline.
"""
from __future__ import annotations

import base64
import html
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vapm.core.errors import VapmError, one_line
from vapm.core.mappings import flatten

SIGNIFICANCE = 0.05
OUT_DIR = Path("reports")


class ReportError(VapmError, ValueError):
    """The report cannot be made (unknown base ref, not a git repository, ...)."""


@dataclass
class Side:
    label: str
    read: Callable[[str], bytes | None]   # a repository path -> its bytes on this side, or None
    commit: str | None = None

    def text(self, path: str) -> str | None:
        data = self.read(path)
        return None if data is None else data.decode()

    def json(self, path: str) -> Any:
        text = self.text(path)
        return None if text is None else json.loads(text)


def git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


def git_side(ref: str, root: Path) -> Side:
    resolved = git(["rev-parse", "--verify", f"{ref}^{{commit}}"], root)
    if resolved.returncode != 0:
        raise ReportError(f"unknown base ref {ref!r}: {one_line(resolved.stderr.decode()) or 'not a commit'} "
                          "(give a branch, tag or commit, e.g. --base main)")
    commit = resolved.stdout.decode().strip()

    def read(path: str) -> bytes | None:
        shown = git(["show", f"{commit}:{path}"], root)
        return shown.stdout if shown.returncode == 0 else None

    return Side(f"{ref} ({commit[:8]})", read, commit)


def workspace_side(root: Path) -> Side:
    def read(path: str) -> bytes | None:
        file = root / path
        return file.read_bytes() if file.is_file() else None

    head = git(["rev-parse", "HEAD"], root)
    commit = head.stdout.decode().strip() if head.returncode == 0 else None
    return Side("workspace", read, commit)


def changed_params(base: Side, head: Side) -> list[tuple[str, Any, Any]]:
    before = flatten(yaml.safe_load(base.text("params.yaml") or "{}") or {})
    after = flatten(yaml.safe_load(head.text("params.yaml") or "{}") or {})
    return [(key, before.get(key, "—"), after.get(key, "—")) for key in sorted(set(before) | set(after))
            if before.get(key, "—") != after.get(key, "—")]


def model_names(side: Side) -> list[str]:
    registry = yaml.safe_load(side.text("models.yaml") or "{}") or {}
    return list((registry.get("models") or {}).keys())


def read_predictions(side: Side, name: str):
    import pandas as pd

    text = side.text(f"metrics/predictions/{name}.csv")
    return None if text is None else pd.read_csv(io.StringIO(text))


def paired_test(base_predictions, head_predictions, same_data: bool) -> dict[str, Any]:
    """McNemar on the items both sides scored, when they scored the same items."""
    from vapm.evaluation.metrics import mcnemar_exact

    if base_predictions is None or head_predictions is None:
        return {"paired": False, "why": "one side has no per-item predictions"}
    if not same_data or sorted(base_predictions["file"]) != sorted(head_predictions["file"]):
        return {"paired": False, "why": "the test sets differ: compare the intervals only"}
    merged = base_predictions.merge(head_predictions, on="file", suffixes=("_base", "_head"))
    base_right = merged["predicted_base"] == merged["actual_base"]
    head_right = merged["predicted_head"] == merged["actual_head"]
    only_base = int((base_right & ~head_right).sum())
    only_head = int((~base_right & head_right).sum())
    p_value = mcnemar_exact(only_base, only_head)
    return {"paired": True, "n": len(merged), "only_base_right": only_base, "only_head_right": only_head,
            "both_right": int((base_right & head_right).sum()), "both_wrong": int((~base_right & ~head_right).sum()),
            "p_value": p_value, "significant": p_value < SIGNIFICANCE}


@dataclass
class ModelComparison:
    name: str
    base: dict[str, Any] | None
    head: dict[str, Any] | None
    base_details: dict[str, Any] | None
    head_details: dict[str, Any] | None
    test: dict[str, Any]
    pictures: dict[str, tuple[bytes | None, bytes | None]] = field(default_factory=dict)
    seconds: tuple[float | None, float | None] = (None, None)
    crossval: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)  # vapm crossval's summaries


def compare_model(name: str, base: Side, head: Side) -> ModelComparison:
    base_details, head_details = base.json(f"metrics/details/{name}.json"), head.json(f"metrics/details/{name}.json")
    manifests = [(d or {}).get("data_manifest_sha256") for d in (base_details, head_details)]
    same_data = manifests[0] is not None and manifests[0] == manifests[1]
    pictures = {kind: (base.read(f"metrics/plots/images/{kind}/{name}.png"),
                       head.read(f"metrics/plots/images/{kind}/{name}.png")) for kind in ("confusion", "curves")}
    return ModelComparison(name, base.json(f"metrics/scores/{name}.json"), head.json(f"metrics/scores/{name}.json"),
                           base_details, head_details,
                           paired_test(read_predictions(base, name), read_predictions(head, name), same_data), pictures,
                           crossval=(crossval_summary(base, name), crossval_summary(head, name)))


def crossval_summary(side: Side, name: str) -> dict[str, Any] | None:
    """The k-fold summary `vapm crossval` wrote for a model on this side, or None."""
    from vapm.evaluation.crossval import OUT_DIR, read_summary

    return read_summary(side.json(f"{OUT_DIR.as_posix()}/{name}.json"), name)


def training_seconds(commits: tuple[str | None, str | None], models: list[str]) -> dict[str, tuple[Any, Any]]:
    """Each model's training time per side, from the MLflow runs tagged with that side's commit (if any)."""
    from vapm.config.paths import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}  # no store yet: nothing was recorded (and a report must not create one)
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
    except Exception:  # no store, or it cannot be reached: the report says "not recorded"
        return {}
    found: dict[str, list[Any]] = {name: [None, None] for name in models}
    for position, commit in enumerate(commits):
        if commit is None or not experiments:
            continue
        runs = client.search_runs(experiments, filter_string=f"tags.git_commit = '{commit}'",
                                  order_by=["attributes.start_time DESC"])
        for run in runs:
            model = run.data.tags.get("model")
            if model in found and found[model][position] is None:
                found[model][position] = run.data.metrics.get("training_seconds")
    return {name: tuple(values) for name, values in found.items()}


def build_report(base: Side, head: Side) -> dict[str, Any]:
    names = list(dict.fromkeys(model_names(base) + model_names(head)))
    comparisons = [compare_model(name, base, head) for name in names]
    times = training_seconds((base.commit, head.commit), names)
    for comparison in comparisons:
        comparison.seconds = times.get(comparison.name, (None, None))
    return {"base": base.label, "head": head.label, "params": changed_params(base, head), "models": comparisons}


# --------------------------------------------------------------------------- rendering

def _pct(scores: dict[str, Any] | None) -> str:
    if not scores:
        return "—"
    if "auc" in scores:  # a detector's headline: its ROC AUC
        return f"AUC {scores['auc']:.3f} ({scores['auc_lo']:.3f}–{scores['auc_hi']:.3f})"
    return f"{100 * scores['acc']:.1f} % ({100 * scores['acc_lo']:.1f}–{100 * scores['acc_hi']:.1f})"


def _f1(scores: dict[str, Any] | None) -> str:
    return "—" if not scores or "f1" not in scores else f"{scores['f1']:.3f}"


def _balanced(scores: dict[str, Any] | None) -> str:
    return "—" if not scores or "bal_acc" not in scores else f"{scores['bal_acc']:.3f}"


def _baseline(base: dict[str, Any] | None, head: dict[str, Any] | None) -> str:
    """The majority-class baseline: one number when both sides agree or only one has it, else before → after."""
    values = [f"{s['baseline']:.3f}" for s in (base, head) if s and "baseline" in s]
    if not values:
        return "—"
    return values[-1] if len(set(values)) == 1 or len(values) == 1 else f"{values[0]} → {values[1]}"


TRUST_COLUMNS = (("ece", "calibration error (ECE)"), ("unfl_test", "test items flagged unfamiliar"),
                 ("unfl_val", "validation items over the distance threshold (out of fold)"),
                 ("unfl_min", "least share of a shift flagged"))


def _trust_rows(report: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Per classifier with the numbers: before → after of the ECE and of the unfamiliar-input flag's shares."""
    rows = []
    for model in report["models"]:
        cells = []
        for key, _ in TRUST_COLUMNS:
            before, after = (("—" if not scores or key not in scores else
                              f"{scores[key]:.3f}" if key == "ece" else f"{100 * scores[key]:.1f} %")
                             for scores in (model.base, model.head))
            cells.append(after if before == after else f"{before} → {after}")
        if any(cell != "—" for cell in cells):
            rows.append((model.name, cells))
    return rows


CROSSVAL_COLUMNS = ("folds (items)", "accuracy, mean ± sd", "lowest fold's accuracy", "balanced acc., mean ± sd",
                    "macro-F1, mean ± sd", "flagged unfamiliar, mean (worst fold)", "ECE after T, mean (worst fold)")


def _crossval_cells(summary: dict[str, Any] | None) -> list[str]:
    if not summary:
        return ["—"] * len(CROSSVAL_COLUMNS)
    return [f"{summary['folds']} ({summary['n_items']})",
            f"{100 * summary['accuracy_mean']:.1f} % ± {100 * summary['accuracy_sd']:.1f}",
            f"{100 * summary['accuracy_min']:.1f} %",
            f"{summary['balanced_accuracy_mean']:.3f} ± {summary['balanced_accuracy_sd']:.3f}",
            f"{summary['macro_f1_mean']:.3f} ± {summary['macro_f1_sd']:.3f}",
            f"{100 * summary['unfamiliar_share_mean']:.1f} % ({100 * summary['unfamiliar_share_max']:.1f} %)"
            if "unfamiliar_share_mean" in summary else "—",
            f"{summary['ece_calibrated_mean']:.3f} ({summary['ece_calibrated_max']:.3f})"
            if "ece_calibrated_mean" in summary else "—"]


def _crossval_rows(report: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Per model that either side cross-validated: each cell, or before → after where the two sides differ."""
    rows = []
    for model in report["models"]:
        if not any(model.crossval):
            continue
        before, after = (_crossval_cells(summary) for summary in model.crossval)
        rows.append((model.name, [a if b == a else f"{b} → {a}" for b, a in zip(before, after)]))
    return rows


def _verdict(test: dict[str, Any]) -> str:
    if not test["paired"]:
        return test["why"]
    sign = "significant" if test["significant"] else "not significant"
    return (f"McNemar p = {test['p_value']:.3g} ({sign} at {SIGNIFICANCE:g}): {test['only_head_right']} items now "
            f"right that were wrong, {test['only_base_right']} now wrong that were right, of {test['n']}")


def _seconds(value: Any) -> str:
    return "not recorded" if value is None else f"{value:.1f} s"


def render_markdown(report: dict[str, Any], picture_links: dict[tuple[str, str, str], str]) -> str:
    lines = [f"# Retraining report: {report['head']} against {report['base']}", ""]
    lines += ["## Params that changed", ""]
    if report["params"]:
        lines += ["| param | before | after |", "|---|---|---|"]
        lines += [f"| `{key}` | {before} | {after} |" for key, before, after in report["params"]]
    else:
        lines.append("None.")
    lines += ["", "## Models", "", "| model | accuracy (detector: AUC) before (95 % CI) | after | macro-F1 before | after | "
              "balanced acc. before | after | majority baseline | paired test on the same items |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model in report["models"]:
        lines.append(f"| {model.name} | {_pct(model.base)} | {_pct(model.head)} | {_f1(model.base)} | "
                     f"{_f1(model.head)} | {_balanced(model.base)} | {_balanced(model.head)} | "
                     f"{_baseline(model.base, model.head)} | {_verdict(model.test)} |")
    trust = _trust_rows(report)
    if trust:
        lines += ["", "## Calibration and unfamiliar inputs (before → after)", "",
                  "| model | " + " | ".join(label for _, label in TRUST_COLUMNS) + " |",
                  "|---|" + "---:|" * len(TRUST_COLUMNS)]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in trust]
    crossval = _crossval_rows(report)
    if crossval:
        lines += ["", "## Cross-validation (vapm crossval: stratified k folds of train + test)", "",
                  "| model | " + " | ".join(CROSSVAL_COLUMNS) + " |", "|---|" + "---:|" * len(CROSSVAL_COLUMNS)]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in crossval]
    lines += ["", "## Data and time", "", "| model | data manifest before | after | training time before | after |",
              "|---|---|---|---:|---:|"]
    for model in report["models"]:
        hashes = [(d or {}).get("data_manifest_sha256") or "—" for d in (model.base_details, model.head_details)]
        lines.append(f"| {model.name} | `{hashes[0][:12]}` | `{hashes[1][:12]}` | {_seconds(model.seconds[0])} | "
                     f"{_seconds(model.seconds[1])} |")
    lines += ["", "## Pictures", ""]
    for model in report["models"]:
        for kind in ("confusion", "curves"):
            links = [picture_links.get((model.name, kind, side)) for side in ("base", "head")]
            if any(links):
                lines += [f"### {model.name}: {kind}", "", "| before | after |", "|---|---|",
                          "| " + " | ".join(f"![{kind} {side}]({link})" if link else "—"
                                            for side, link in zip(("before", "after"), links)) + " |", ""]
    return "\n".join(lines) + "\n"


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return "<p class='none'>—</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(str(b))}</td><td>{esc(str(a))}</td></tr>"
                   for k, b, a in report["params"]) or "<tr><td colspan=3>None.</td></tr>"
    models = "".join(
        f"<tr><td>{esc(m.name)}</td><td>{esc(_pct(m.base))}</td><td>{esc(_pct(m.head))}</td><td>{esc(_f1(m.base))}"
        f"</td><td>{esc(_f1(m.head))}</td><td>{esc(_balanced(m.base))}</td><td>{esc(_balanced(m.head))}</td>"
        f"<td>{esc(_baseline(m.base, m.head))}</td><td class='{'sig' if m.test.get('significant') else ''}'>"
        f"{esc(_verdict(m.test))}</td></tr>" for m in report["models"])
    data = "".join(
        f"<tr><td>{esc(m.name)}</td>" + "".join(
            f"<td><code>{esc(((d or {}).get('data_manifest_sha256') or '—')[:12])}</code></td>"
            for d in (m.base_details, m.head_details)) +
        f"<td>{esc(_seconds(m.seconds[0]))}</td><td>{esc(_seconds(m.seconds[1]))}</td></tr>" for m in report["models"])
    trust = "".join(f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>"
                    for name, cells in _trust_rows(report))
    crossval = "".join(f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{esc(cell)}</td>" for cell in cells) + "</tr>"
                       for name, cells in _crossval_rows(report))
    crossval_table = ("<h2>Cross-validation (vapm crossval: stratified k folds of train + test)</h2><table><tr>"
                      "<th>model</th>" + "".join(f"<th>{esc(label)}</th>" for label in CROSSVAL_COLUMNS) +
                      f"</tr>{crossval}</table>" if crossval else "")
    trust_table = ("<h2>Calibration and unfamiliar inputs (before → after)</h2><table><tr><th>model</th>" +
                   "".join(f"<th>{esc(label)}</th>" for _, label in TRUST_COLUMNS) + f"</tr>{trust}</table>"
                   if trust else "")
    pictures = "".join(
        f"<h3>{esc(m.name)}: {kind}</h3><div class='pair'><figure>{_img(m.pictures[kind][0], 'before')}"
        f"<figcaption>before</figcaption></figure><figure>{_img(m.pictures[kind][1], 'after')}"
        f"<figcaption>after</figcaption></figure></div>"
        for m in report["models"] for kind in ("confusion", "curves") if any(m.pictures[kind]))
    title = f"Retraining report: {report['head']} against {report['base']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
td.sig {{ background: #fff3cd; font-weight: bold; }}
.pair {{ display: flex; gap: 1em; flex-wrap: wrap; }}
figure {{ margin: 0; }} img {{ max-width: 640px; border: 1px solid #ddd; }}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Params that changed</h2><table><tr><th>param</th><th>before</th><th>after</th></tr>{rows}</table>
<h2>Models</h2><table><tr><th>model</th><th>accuracy (detector: AUC) before (95 % CI)</th><th>after</th><th>macro-F1 before</th>
<th>after</th><th>balanced acc. before</th><th>after</th><th>majority baseline</th><th>paired test on the same items</th>
</tr>{models}</table>
{trust_table}
{crossval_table}
<h2>Data and time</h2><table><tr><th>model</th><th>data manifest before</th><th>after</th><th>training time before</th>
<th>after</th></tr>{data}</table>
<h2>Pictures</h2>{pictures}
</body></html>
"""


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures_dir = out_dir / "pictures"
    links: dict[tuple[str, str, str], str] = {}
    for model in report["models"]:
        for kind, sides in model.pictures.items():
            for side, data in zip(("base", "head"), sides):
                if data is not None:
                    pictures_dir.mkdir(exist_ok=True)
                    path = pictures_dir / f"{model.name}-{kind}-{side}.png"
                    path.write_bytes(data)
                    links[(model.name, kind, side)] = path.relative_to(out_dir).as_posix()
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(render_markdown(report, links))
    page.write_text(render_html(report))
    return markdown, page


def report_data(report: dict[str, Any]) -> dict[str, Any]:
    """The report as JSON (what tests and other tools read)."""
    return {"base": report["base"], "head": report["head"],
            "params": [{"param": k, "before": b, "after": a} for k, b, a in report["params"]],
            "models": {m.name: {"before": m.base, "after": m.head, "test": m.test,
                                "training_seconds": list(m.seconds),
                                "crossval": {"before": m.crossval[0], "after": m.crossval[1]}}
                       for m in report["models"]}}
