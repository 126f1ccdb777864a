"""`vapm crossval [MODEL...]`: k-fold evaluation of registered classifiers (vapm.training.crossval)."""
from __future__ import annotations

import argparse
import json
import sys

from vapm.core.errors import VapmError, one_line
from vapm.training.crossval import OUT_DIR, CrossvalError, crossval_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm crossval", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registered models (default: crossval.models)")
    args = parser.parse_args(argv)
    try:
        from vapm.config.model_registry import load_registry
        from vapm.config.settings import load_settings

        registry = load_registry()
        unknown = sorted(set(args.models) - set(registry))
        if unknown:
            raise CrossvalError(f"unknown model(s) {unknown}; registered: {', '.join(registry)}")
        models = args.models or list(load_settings(models=()).crossval.models)
        settings = load_settings(models=models)
        folds = settings.crossval.folds
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name in models:
            if registry[name].task != "classifier":
                raise CrossvalError(f"{name} is a {registry[name].task}: crossval scores classifiers")
            print(f"{name}: {folds}-fold cross-validation", flush=True)
            result, seconds = crossval_model(name, settings, folds)
            (OUT_DIR / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            print(f"{name}: accuracy {result['accuracy_mean']:.4f} ± {result['accuracy_std']:.4f} over {folds} "
                  f"folds ({seconds:.0f} s)")
    except VapmError as err:
        print(f"crossval: {one_line(str(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
