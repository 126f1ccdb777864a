"""Watch a folder and score every new image or recording as it comes off the line.

    vapm monitor incoming/ --model models/vision_scratch --model models/acoustic_cnn --normal Healthy

Each model is loaded once. A file is scored when it is completely written: after its writer closed it or
it was moved in (inotify), and it then stayed unchanged for --settle seconds. With --poll (for folders
inotify cannot watch, such as network drives) a file counts as written when its size and modification time
stayed unchanged for --settle seconds: set it above the longest pause of the slowest writer. Every file gets one JSON line in the alert log
(schema: docs/alert.schema.json): time, file, its size and sha256, each model's answer with its version,
and whether it is an alert (a detector says abnormal, or a classifier names a class not listed as
--normal). Alerts are also printed. A file that cannot be scored is logged with its reason and skipped;
the monitor goes on. A state file remembers what was scored, so a restart scores nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vapm.core.errors import VapmError

ALERT_LOG = "alerts.jsonl"
STATE_FILE = ".vapm-monitor-state.json"
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
SCHEMA_VERSION = 1


class MonitorError(VapmError, ValueError):
    """The monitor cannot start as asked (no such folder, no model, ...)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Monitor:
    folder: Path
    models: list[Any]                        # vapm.serving.loading.LoadedModel, loaded once
    normal_classes: set[str] = field(default_factory=set)
    alert_log: Path | None = None
    state_file: Path | None = None
    settle: float = 0.25
    out: Any = sys.stdout
    done: dict[str, list[int]] = field(default_factory=dict)  # relative path -> [size, mtime_ns] scored
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.folder = self.folder.resolve()
        self.alert_log = (self.alert_log or self.folder / ALERT_LOG).resolve()
        self.state_file = (self.state_file or self.folder / STATE_FILE).resolve()
        if self.state_file.is_file():
            try:
                self.done = json.loads(self.state_file.read_text())
            except (json.JSONDecodeError, OSError):
                self.done = {}  # an unreadable state only costs rescoring, never a crash

    # ----------------------------------------------------------------- which files

    def wanted(self, path: Path) -> bool:
        """A data file some model takes, not one of ours, not a temporary or hidden file."""
        if path.resolve() in (self.alert_log, self.state_file) or path.name.startswith("."):
            return False
        if path.suffix.lower() in IGNORED_SUFFIXES:
            return False
        return any(path.suffix.lower() in model_suffixes(model) for model in self.models)

    def signature(self, path: Path) -> list[int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def pending(self) -> list[Path]:
        """Files in the folder not yet scored in their current version (size and modification time)."""
        found = []
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            if self.wanted(path) and self.done.get(self.key(path)) != self.signature(path):
                found.append(path)
        return found

    def key(self, path: Path) -> str:
        return path.resolve().relative_to(self.folder).as_posix()

    # ----------------------------------------------------------------- scoring

    def score(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Score files in one batch per model, append their alert lines, remember them; returns the lines."""
        with self._lock:
            files, lines = [], []
            for path in paths:
                signature = self.signature(path)
                if signature is None or self.done.get(self.key(path)) == signature:
                    continue  # gone, or already scored in this version
                try:
                    data = path.read_bytes()
                except OSError as err:
                    lines.append(self.line(path, signature, None, [], f"{self.key(path)}: cannot read it ({err})"))
                    continue
                files.append((path, signature, data))
            answers: dict[str, list[dict[str, Any]]] = {self.key(p): [] for p, _, _ in files}
            for model in self.models:
                batch = [(self.key(p), data) for p, _, data in files if p.suffix.lower() in model_suffixes(model)]
                if batch:
                    for (name, _), answer in zip(batch, model.predict_files(batch)):
                        answers[name].append(answer)
            for path, signature, data in files:
                results = answers[self.key(path)]
                errors = [r["error"] for r in results if "error" in r]
                lines.append(self.line(path, signature, hashlib.sha256(data).hexdigest(), [r for r in results if "error" not in r],
                                       "; ".join(errors) or None))
            self.append(lines)
            return lines

    def line(self, path: Path, signature: list[int] | None, digest: str | None, results: list[dict[str, Any]],
             error: str | None) -> dict[str, Any]:
        line = {"schema": SCHEMA_VERSION, "time": utc_now(), "file": self.key(path),
                "size": signature[0] if signature else None, "sha256": digest,
                "results": [summarise(result, self.normal_classes) for result in results],
                "alert": False, "error": error}
        line["alert"] = any(result["alert"] for result in line["results"])
        if signature is not None:
            self.done[line["file"]] = signature
        return line

    def append(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        with self.alert_log.open("a") as log:
            for line in lines:
                log.write(json.dumps(line, sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps(self.done, sort_keys=True))
        os.replace(temporary, self.state_file)  # a crash leaves the old state or the new, never half of one
        for line in lines:
            if line["error"]:
                print(f"skipped {line['file']}: {line['error']}", file=self.out, flush=True)
            elif line["alert"]:
                said = "; ".join(describe(result) for result in line["results"] if result["alert"])
                print(f"ALERT {line['file']}: {said}", file=self.out, flush=True)

    # ----------------------------------------------------------------- watching

    def run(self, poll: bool = False, stop: threading.Event | None = None, interval: float = 0.1) -> None:
        """Score what is pending, then watch until `stop` is set (or forever); files settle before scoring."""
        stop = stop or threading.Event()
        touched: dict[Path, float] = {}
        lock = threading.Lock()

        def note(path: str) -> None:
            candidate = Path(path)
            if self.wanted(candidate):
                with lock:
                    touched[candidate] = time.monotonic()

        observer = start_observer(self.folder, note, poll)
        with lock:  # after the observer started: a file arriving meanwhile is seen by one or the other
            for path in self.pending():
                touched.setdefault(path, 0.0)
        try:
            while not stop.is_set():
                now = time.monotonic()
                with lock:
                    ready = [p for p, last in touched.items() if now - last >= self.settle]
                    for path in ready:
                        touched.pop(path)
                if ready:
                    settled = [p for p in ready if self.settled(p)]
                    with lock:
                        for path in set(ready) - set(settled):
                            if path.exists():
                                touched[path] = time.monotonic()  # still changing: look again later
                    if settled:
                        self.score(settled)
                stop.wait(interval)
        finally:
            observer.stop()
            observer.join(timeout=5)

    def settled(self, path: Path) -> bool:
        """Unchanged for `settle` seconds: the writer is done (even one that writes in pieces)."""
        before = self.signature(path)
        if before is None:
            return False
        age = time.time() - before[1] / 1e9
        if age >= self.settle:
            return True
        time.sleep(self.settle - age)
        return self.signature(path) == before


def warm_up(model: Any) -> None:
    """Score one synthetic file, so the first real one does not pay for first-call costs (lazy imports, JIT)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    if model.input.modality == "vision":
        from PIL import Image

        Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(buffer, format="PNG")
        model.predict_files([("warm-up.png", buffer.getvalue())])
        return
    import soundfile

    audio = model.record["input"]["audio"]
    rate = int(round(audio["sample_rate"]))
    samples = np.random.default_rng(0).normal(0, 0.1, int(audio["clip_samples"] * rate / audio["sample_rate"]))
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    model.predict_files([("warm-up.wav", buffer.getvalue())])


def model_suffixes(model: Any) -> tuple[str, ...]:
    from vapm.data.features.records import raw_suffixes

    return raw_suffixes(model.input)


def summarise(result: dict[str, Any], normal_classes: set[str]) -> dict[str, Any]:
    """One model's answer for the alert log (schema: docs/alert.schema.json)."""
    summary = {"model": result["model"], "version": result.get("version")}
    if "status" in result:  # a detector
        summary.update(status=result["status"], score=result["score"], threshold=result["threshold"],
                       alert=result["status"] == "abnormal")
    else:
        summary.update(**{"class": result["class"], "probability": result.get("probability")},
                       alert=bool(normal_classes) and result["class"] not in normal_classes)
    return summary


def describe(summary: dict[str, Any]) -> str:
    if "status" in summary:
        return f"{summary['model']} says {summary['status']} (score {summary['score']:.3g} > {summary['threshold']:.3g})"
    probability = f" ({summary['probability']:.1%})" if summary.get("probability") is not None else ""
    return f"{summary['model']} says {summary['class']}{probability}"


def start_observer(folder: Path, note, poll: bool):
    """watchdog's inotify observer, noting files when their writer closes them or they are moved in; or its
    polling observer, noting every change (then only --settle tells a pausing writer from a finished one)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    ready_events = ("created", "modified", "moved") if poll else ("closed", "moved")

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if not event.is_directory and event.event_type in ready_events:
                note(getattr(event, "dest_path", "") or event.src_path)

    observer = (PollingObserver(timeout=0.2) if poll else Observer())
    observer.schedule(Handler(), str(folder), recursive=True)
    observer.start()
    return observer


def load_models(model_dirs: list[str]) -> list[Any]:
    """Each model loaded once, and warmed up on a synthetic file."""
    from vapm.serving.loading import load_model

    models = [load_model(folder) for folder in model_dirs]
    for model in models:
        warm_up(model)
    return models
