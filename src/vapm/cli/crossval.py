"""`vapm crossval [MODEL...] [-j N]`: k-fold evaluation of registered classifiers (vapm.training.crossval)."""
from __future__ import annotations

import argparse
import json
import sys

from vapm.core.errors import VapmError, one_line
from vapm.evaluation.crossval import OUT_DIR, TIMING_DIR, metrics_document
from vapm.training.crossval import CrossvalError, crossval_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm crossval", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registered classifiers (default: crossval.models)")
    parser.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                        help="folds trained at once, each in its own process (default: crossval.jobs; with a Dask "
                             "scheduler, compute.scheduler or $DASK_SCHEDULER_ADDRESS, the cluster trains them)")
    args = parser.parse_args(argv)
    try:
        from vapm.config.model_registry import load_registry
        from vapm.config.settings import load_settings

        registry = load_registry()
        unknown = sorted(set(args.models) - set(registry))
        if unknown:
            raise CrossvalError(f"unknown model(s) {unknown}; registered: {', '.join(registry)}")
        models = args.models or list(load_settings(models=()).crossval.models)
        not_classifiers = [name for name in models if name in registry and registry[name].task != "classifier"]
        if not_classifiers:
            raise CrossvalError(f"{', '.join(not_classifiers)}: not a classifier (crossval scores classifiers: "
                                f"{', '.join(n for n, e in registry.items() if e.task == 'classifier')})")
        from vapm.config.compute import scheduler_address

        settings = load_settings(models=models)
        scheduler = scheduler_address(settings.compute.scheduler)
        folds = settings.crossval.folds
        jobs = settings.crossval.jobs if args.jobs is None else args.jobs
        if jobs < 1:
            raise CrossvalError(f"-j/--jobs must be at least 1, got {jobs}")
        for name in models:
            where = f"on the Dask cluster {scheduler}" if scheduler else f"{min(jobs, folds)} at a time"
            print(f"{name}: {folds}-fold cross-validation, {where}", flush=True)
            metrics, timing = crossval_model(name, settings, folds, jobs, scheduler)
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            document = metrics_document(name, metrics)
            (OUT_DIR / f"{name}.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
            TIMING_DIR.mkdir(parents=True, exist_ok=True)
            (TIMING_DIR / f"{name}.json").write_text(json.dumps(timing, indent=2) + "\n")
            print(f"{name}: accuracy {metrics['accuracy_mean']:.4f} ± {metrics['accuracy_sd']:.4f}, balanced "
                  f"accuracy {metrics['balanced_accuracy_mean']:.4f} ± {metrics['balanced_accuracy_sd']:.4f}, "
                  f"macro-F1 {metrics['macro_f1_mean']:.4f} ± {metrics['macro_f1_sd']:.4f} over {folds} folds "
                  f"({timing['wall_seconds']:.0f} s; training per fold "
                  f"{', '.join(f'{s:.0f}' for s in timing['fold_training_seconds'])} s)", flush=True)
    except VapmError as err:
        print(f"crossval: {one_line(str(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
