"""`vapm monitor DIR --model MODEL_DIR`: watch a folder, score every new image or recording once, log and print alerts
(vapm.serving.monitor)."""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from pathlib import Path

from vapm.cli.predict import RUNTIME_CHOICES, add_runtime_option
from vapm.core.errors import VapmError, one_line
from vapm.serving.monitor import (
    ALERT_LOG,
    DEFAULT_MAX_FILE_BYTES,
    HEATMAP_FOLDER,
    MAX_FILE_MB,
    STATE_FILE,
    Monitor,
    MonitorError,
)
from vapm.serving.warm_models import load_models
from vapm.serving.untrusted_files import shown


def file_limit(text: str) -> int:
    """--max-file-mb: a number of MiB above 0 (fractions allowed), at most 2**40, as bytes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {shown(text)}") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_FILE_MB:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_FILE_MB:.0f} (MiB), got {shown(text)}")
    return max(1, int(value * 2**20))


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a name the terminal cannot encode is escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = argparse.ArgumentParser(prog="vapm monitor", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the folder new images and recordings arrive in")
    parser.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                        help="a trained model folder (repeat for several, e.g. a classifier and a detector)")
    parser.add_argument("--normal", action="append", default=[], metavar="CLASS",
                        help="a class that is no alert (repeat; default: classes never alert, detectors do)")
    parser.add_argument("--alerts", type=Path, help=f"the JSON-lines alert log (default FOLDER/{ALERT_LOG})")
    parser.add_argument("--state", type=Path, help=f"what was scored, for restarts (default FOLDER/{STATE_FILE})")
    parser.add_argument("--heatmaps", type=Path, metavar="DIR",
                        help=f"where a visual anomaly detector's abnormal images are drawn with their anomaly maps "
                             f"(default: {HEATMAP_FOLDER}/ beside the alert log)")
    parser.add_argument("--settle", type=float, default=0.25, help="seconds a file must stay unchanged (0.25)")
    parser.add_argument("--max-file-mb", type=file_limit, default=DEFAULT_MAX_FILE_BYTES, metavar="MB",
                        help=f"larger files are skipped from their size, never read "
                             f"({DEFAULT_MAX_FILE_BYTES // 2**20}, ingest.max_member_mb's default)")
    parser.add_argument("--poll", action="store_true", help="poll the folder instead of inotify (network drives)")
    parser.add_argument("--once", action="store_true", help="score what is there now, then stop")
    add_runtime_option(parser)
    args = parser.parse_args(argv)
    stopper = stop_on_signals()
    try:
        if not args.folder.is_dir():
            raise MonitorError(f"{shown(str(args.folder))} is not a folder: create it, or give the folder files "
                               f"arrive in")
        monitor = Monitor(args.folder, load_models(args.model, RUNTIME_CHOICES[args.runtime]), set(args.normal),
                          args.alerts, args.state, args.settle, max_file_bytes=args.max_file_mb,
                          heatmap_dir=args.heatmaps)
        names = ", ".join(f"{shown(m.name)} (version {shown(m.version or 'local')})" for m in monitor.models)

        def announce(arm: bool = True) -> None:
            print(f"watching {shown(str(monitor.folder))} with {names}; alert log {shown(str(monitor.alert_log))}",
                  flush=True)
            stopper.watching = arm

        if args.once:
            announce(arm=False)
            monitor.score(monitor.pending())
            return 0
        monitor.run(poll=args.poll, stop=stopper.event, watching=announce)
    except VapmError as err:
        print(f"monitor: {shown(one_line(str(err)))}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    print("stopped", flush=True)
    return 0


class Stopper:
    """What Ctrl-C and SIGTERM do. While the watch runs they set `event`, which the watch loop looks at between
    files: an exception raised at an arbitrary instruction can land inside `exec` (dataclasses and lazy imports
    run it), where CPython marks it unhandled and exits killed by SIGINT even after it was caught. Before the
    watch (loading models) and with --once they interrupt at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.watching = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.watching:
            raise KeyboardInterrupt
        self.event.set()


def stop_on_signals() -> Stopper:
    """Ctrl-C and SIGTERM (a service manager's stop) end the watch cleanly, also when the monitor was started from
    a non-interactive shell in the background, which starts it with SIGINT ignored."""
    stopper = Stopper()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopper)
    return stopper


if __name__ == "__main__":
    sys.exit(main())
