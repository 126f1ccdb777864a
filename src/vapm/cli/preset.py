"""`vapm preset PRESET [--run ...]`: a preset as `dvc exp run -S` arguments, or run it (vapm.config.presets)."""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from vapm.config.presets import load_preset, override_args
from vapm.core.errors import VapmError, one_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm preset", description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="YAML file of dotted params, e.g. presets/real-data.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", action="store_true",
                        help="run `dvc exp run` with the preset; later arguments (e.g. --name x) go to it")
    args, extra = parser.parse_known_args(argv)
    if extra and not args.run:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (arguments for dvc exp run need --run)")
    extra = extra[1:] if extra[:1] == ["--"] else extra
    try:
        from vapm.config.settings import read_params

        overrides = override_args(load_preset(args.preset), read_params(args.params), for_shell=not args.run)
    except VapmError as err:
        print(f"preset: {one_line(str(err))}", file=sys.stderr)
        return 1
    if args.run:
        command = ["dvc", "exp", "run", *overrides, *extra]
        print("+ " + " ".join(shlex.quote(arg) for arg in command), file=sys.stderr, flush=True)
        return subprocess.call(command)
    print(" ".join(overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
