"""`vapm monitor DIR --model MODEL_DIR`: watch a folder, score every new image or recording once, log and print alerts
(vapm.serving.monitor)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vapm.core.errors import VapmError, one_line
from vapm.serving.monitor import ALERT_LOG, STATE_FILE, Monitor, MonitorError, load_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm monitor", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder new images and recordings arrive in")
    parser.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                        help="a trained model folder (repeat for several, e.g. a classifier and a detector)")
    parser.add_argument("--normal", action="append", default=[], metavar="CLASS",
                        help="a class that is no alert (repeat; default: classes never alert, detectors do)")
    parser.add_argument("--alerts", type=Path, help=f"the JSON-lines alert log (default FOLDER/{ALERT_LOG})")
    parser.add_argument("--state", type=Path, help=f"what was scored, for restarts (default FOLDER/{STATE_FILE})")
    parser.add_argument("--settle", type=float, default=0.25, help="seconds a file must stay unchanged (0.25)")
    parser.add_argument("--poll", action="store_true", help="poll the folder instead of inotify (network drives)")
    parser.add_argument("--once", action="store_true", help="score what is there now, then stop")
    args = parser.parse_args(argv)
    try:
        if not args.folder.is_dir():
            raise MonitorError(f"{args.folder} is not a folder: create it, or give the folder files arrive in")
        monitor = Monitor(args.folder, load_models(args.model), set(args.normal), args.alerts, args.state,
                          args.settle)
    except VapmError as err:
        print(f"monitor: {one_line(str(err))}", file=sys.stderr)
        return 1
    names = ", ".join(f"{m.name} (version {m.version or 'local'})" for m in monitor.models)
    print(f"watching {monitor.folder} with {names}; alert log {monitor.alert_log}", flush=True)
    if args.once:
        monitor.score(monitor.pending())
        return 0
    try:
        monitor.run(poll=args.poll)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
