"""Build .dvc/plots/offline.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined, so that
`dvc plots show` / `dvc plots diff` pages render without network (DVC's default loads them from a CDN).

    python scripts/build_plots_template.py      # needs npm (the npm registry); run again to change versions

The versions are the ones dvc-render's default page asks for. The libraries are BSD-3-Clause licensed (their
notices are kept in the page).
"""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / ".dvc" / "plots" / "offline.html"
PACKAGES = [("vega", "5.20.2", "build/vega.min.js"), ("vega-lite", "5.2.0", "build/vega-lite.min.js"),
            ("vega-embed", "6.18.2", "build/vega-embed.min.js")]


def package_files(name: str, version: str, member: str, workdir: Path) -> tuple[str, str]:
    """(the script, its LICENSE) from the package's npm tarball."""
    subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=workdir, check=True, capture_output=True)
    with tarfile.open(workdir / f"{name}-{version}.tgz") as archive:
        read = lambda path: archive.extractfile(f"package/{path}").read().decode()  # noqa: E731
        return read(member), read("LICENSE")


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, version, member in PACKAGES:
            code, licence = package_files(name, version, member, Path(scratch))
            notice = licence.replace("*/", "* /")
            scripts.append(f"<!-- {name} {version} -->\n<script>/*\n{notice}*/\n{code}\n</script>")
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text("""<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>vapm plots</title>
""" + "\n".join(scripts) + """
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
""")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
