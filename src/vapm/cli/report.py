"""`vapm report [--base REF]`: what a change did to the models: reports/report.md and .html (vapm.evaluation.report)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vapm.core.errors import VapmError, one_line
from vapm.evaluation.report import (
    OUT_DIR,
    ReportError,
    build_report,
    git,
    git_side,
    report_data,
    workspace_side,
    write_report,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm report", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="git ref to compare the workspace with (default: main)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for report.md, report.html, report.json")
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if git(["rev-parse", "--git-dir"], root).returncode != 0:
            raise ReportError(f"{root} is not a git repository: run the report from the repository root")
        report = build_report(git_side(args.base, root), workspace_side(root))
    except VapmError as err:
        print(f"report: {one_line(str(err))}", file=sys.stderr)
        return 1
    markdown, page = write_report(report, args.out)
    (args.out / "report.json").write_text(json.dumps(report_data(report), indent=2, default=str) + "\n")
    print(f"wrote {markdown} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
