"""Watch a folder and score every new image or recording as it comes off the line.

    vapm monitor incoming/ --model models/vision_scratch --model models/acoustic_cnn --normal Healthy

Each model is loaded once. A file is scored when it is completely written: after its writer closed it or
it was moved in (inotify), and it then stayed unchanged for --settle seconds. With --poll (for folders
inotify cannot watch, such as network drives) a file counts as written when its size and modification time
stayed unchanged for --settle seconds: set it above the longest pause of the slowest writer. Every file gets one JSON line in the alert log
(schema: docs/alert.schema.json): time, file, its size and sha256, each model's answer with its version,
and whether it is an alert (a detector says abnormal, or a classifier names a class not listed as
--normal). Alerts are also printed. When a visual anomaly detector (vision_anomaly) says abnormal, the image with
its anomaly map over it is written beside the alert log (--heatmaps, default a `heatmaps` folder there; the file
is named by the image's name and its sha256) and the alert line names it. A file that cannot be scored is logged with its reason and skipped;
the monitor goes on. A state file remembers what was scored, so a restart scores nothing twice.

Whoever can write to the folder is not trusted (docs/reliability.md, "vapm monitor"):
- every name, and every reason that quotes one, is printed through `shown`: one line per file, whatever
  its name holds (escape sequences, newlines, bidi overrides);
- only regular files inside the folder are read: a symbolic link (wherever it points), a named pipe, a
  socket, a device or a folder named like a data file is skipped with its reason, and never opened
  (the folder is walked without following links, files are opened with O_NOFOLLOW | O_NONBLOCK);
- a file larger than --max-file-mb (ingest.max_member_mb's default) is refused from its `stat`, before
  it is opened, and no file is read beyond that limit + 1 byte; what is read goes through the same
  bounded decoders as ingest (pixel and sample limits checked from headers);
- a state file that is not what the monitor writes (any content, any kind of file) costs a warning and
  rescoring, never a crash; the state is rewritten atomically (a temporary file, then os.replace), and the
  alert log and the state are never written through a symbolic link;
- the heatmap folder is opened once, refusing a link, and each picture is created inside it through that open
  folder without following links; its name keeps only letters, digits, '.', '_' and '-' of the image's name; the
  folder is never scored, also when it lies inside the watched one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from vapm.data.ingest.limits import DEFAULT_MAX_MEMBER_BYTES
from vapm.serving.alerts import MonitorError, check_alert_log, describe, open_alert_log, summarise
from vapm.serving.monitor_state import read_state, write_state
from vapm.serving.untrusted_files import (
    CLOEXEC,
    NOFOLLOW,
    NONBLOCK,
    kind_of,
    not_through_link,
    read_within,
    refusal,
    relative_to,
    shown,
)
from vapm.serving.warm_models import model_suffixes

ALERT_LOG = "alerts.jsonl"
HEATMAP_FOLDER = "heatmaps"  # beside the alert log
STATE_FILE = ".vapm-monitor-state.json"
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
SCHEMA_VERSION = 1
DEFAULT_MAX_FILE_BYTES = DEFAULT_MAX_MEMBER_BYTES  # ingest's per-member limit (ingest.max_member_mb: 64)
MAX_FILE_MB = float(2**40)  # the largest --max-file-mb (as for ingest's limits: beyond, byte counts overflow)


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
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # larger files are refused from their stat, never read
    heatmap_dir: Path | None = None          # overlays of abnormal images (default: HEATMAP_FOLDER beside the log)
    done: dict[str, list[int]] = field(default_factory=dict)  # relative path -> [size, mtime_ns] scored
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _state_warned: bool = False
    _heatmap_fd: int | None = None

    def __post_init__(self) -> None:
        self.folder = self.folder.resolve()
        self.alert_log = not_through_link(self.alert_log or self.folder / ALERT_LOG)
        self.state_file = not_through_link(self.state_file or self.folder / STATE_FILE)
        if isinstance(self.max_file_bytes, bool) or not isinstance(self.max_file_bytes, int) \
                or self.max_file_bytes < 1:
            raise MonitorError(f"the file size limit must be a whole number of bytes, at least 1, "
                               f"got {self.max_file_bytes!r}")
        check_alert_log(self.alert_log)
        if any(getattr(model, "gives_maps", False) for model in self.models):
            self.heatmap_dir = not_through_link(self.heatmap_dir or self.alert_log.parent / HEATMAP_FOLDER)
            self._heatmap_fd = open_heatmap_folder(self.heatmap_dir)
        else:
            self.heatmap_dir, self._heatmap_fd = None, None
        self.load_state()

    # ----------------------------------------------------------------- its own files

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.out, flush=True)

    def load_state(self) -> None:
        """What was scored, from the state file; anything but what `save_state` writes only costs rescoring
        (one warning line), and the state is then rewritten."""
        self.done, problem = read_state(self.state_file)
        if problem is not None:
            ignored = "those entries are ignored" if self.done else "it is ignored"
            self.warn(f"the state file {shown(str(self.state_file))} {problem}; {ignored} (files it should "
                      f"remember are scored again) and it is rewritten")
            self.save_state()

    def save_state(self) -> None:
        try:
            write_state(self.state_file, self.done)
        except OSError as err:
            if not self._state_warned:
                self._state_warned = True
                self.warn(f"cannot save the state file {shown(str(self.state_file))} ({err.strerror}): a restart "
                          f"will score again what this run scored")

    # ----------------------------------------------------------------- which files

    def wanted(self, path: Path) -> bool:
        """Named like a data file some model takes, not one of ours, not a temporary or hidden file
        (what it is, a regular file or not, is looked at when it is scored)."""
        if Path(os.path.abspath(path)) in (self.alert_log, self.state_file) or path.name.startswith("."):
            return False
        if self.heatmap_dir is not None and self.heatmap_dir in Path(os.path.abspath(path)).parents:
            return False  # our own pictures
        if path.suffix.lower() in IGNORED_SUFFIXES:
            return False
        return any(path.suffix.lower() in model_suffixes(model) for model in self.models)

    def signature(self, path: Path) -> list[int] | None:
        """[size, mtime_ns] of the entry itself (lstat: a link is not followed)."""
        try:
            info = os.lstat(path)
        except OSError:
            return None
        return [info.st_size, info.st_mtime_ns]

    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Everything below the folder with its lstat, sorted: folders are entered, links are not followed."""
        found, folders = [], [self.folder]
        while folders:
            try:
                with os.scandir(folders.pop()) as listing:
                    children = list(listing)
            except OSError:
                continue  # gone, or not readable
            for child in children:
                try:
                    info = child.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    folders.append(Path(child.path))
                found.append((Path(child.path), info))
        return sorted(found, key=lambda entry: entry[0])

    def pending(self) -> list[Path]:
        """Entries named like data files not yet scored (or skipped) in their current version (size and
        modification time); links, pipes and the like too, so that each gets its line saying why not."""
        return [path for path, info in self.entries()
                if self.wanted(path) and self.done.get(self.key(path)) != [info.st_size, info.st_mtime_ns]]

    def key(self, path: Path) -> str | None:
        """The path relative to the folder, or None for one outside it."""
        return relative_to(self.folder, path)

    def refusal(self, path: Path, info: os.stat_result) -> str | None:
        return refusal(path, info, self.folder, self.max_file_bytes)

    def read(self, path: Path) -> tuple[bytes | None, str | None]:
        return read_within(path, self.folder, self.max_file_bytes)

    # ----------------------------------------------------------------- scoring

    def score(self, paths: list[Path]) -> list[dict[str, Any]]:
        """Score files in batches, one per model, append their alert lines, remember them; returns the lines.

        A batch holds at most --max-file-mb of file content plus one file (a burst of large files is scored
        in several batches, so what is held at once stays bounded whatever arrives)."""
        with self._lock:
            written, lines, files, held = [], [], [], 0
            for path in paths:
                name = self.key(path)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue  # gone
                signature = [info.st_size, info.st_mtime_ns]
                if name is None or self.done.get(name) == signature:
                    continue  # not in the folder, or already scored in this version
                reason = self.refusal(path, info)
                size = info.st_size if stat.S_ISREG(info.st_mode) else None
                data = None
                if reason is None:
                    data, reason = self.read(path)
                    if data is None and reason is None:
                        continue  # gone meanwhile
                if reason is not None:
                    lines.append(self.line(name, signature, size, None, [], f"{name}: {reason}"))
                    continue
                files.append((name, path, signature, data))
                held += len(data)
                if held >= self.max_file_bytes:
                    lines += self.predict(files)
                    self.append(lines)
                    written += lines
                    lines, files, held = [], [], 0
            lines += self.predict(files)
            self.append(lines)
            return written + lines

    def predict(self, files: list[tuple[str, Path, list[int], bytes]]) -> list[dict[str, Any]]:
        """The alert lines of files read: each model scores the files it takes, in one batch."""
        answers: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _, _ in files}
        for model in self.models:
            batch = [(name, data) for name, path, _, data in files if path.suffix.lower() in model_suffixes(model)]
            if not batch:
                continue
            maps = self._heatmap_fd is not None and getattr(model, "gives_maps", False)
            for (name, data), answer in zip(batch, model.predict_files(batch, maps=True) if maps
                                            else model.predict_files(batch)):
                heatmap, image = answer.pop("anomaly_map", None), answer.pop("anomaly_image", None)
                if heatmap is not None and answer.get("status") == "abnormal":
                    answer["heatmap"] = self.write_heatmap(name, data, answer, image, heatmap)
                answers[name].append(answer)
        lines = []
        for name, path, signature, data in files:
            results = answers[name]
            errors = [r["error"] for r in results if "error" in r]
            lines.append(self.line(name, signature, signature[0], hashlib.sha256(data).hexdigest(),
                                   [r for r in results if "error" not in r], "; ".join(errors) or None))
        return lines

    def write_heatmap(self, name: str, data: bytes, answer: dict[str, Any], image: Any, heatmap: Any) -> str | None:
        """The abnormal image with its anomaly map over it, as a PNG in the heatmap folder; its path, or None (and
        one warning line) when it cannot be written: the alert itself is never lost for a picture."""
        import io

        from vapm.models.vision_anomaly.overlay import save_answer_overlay_png

        stem = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in Path(name).stem)[:80]
        picture = f"{stem or 'image'}-{hashlib.sha256(data).hexdigest()[:16]}.png"
        png = io.BytesIO()
        save_answer_overlay_png(image, heatmap, answer, f"{shown(Path(name).name)[:60]} ({answer['model']})", png)
        try:
            fd = os.open(picture, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW | NONBLOCK | CLOEXEC, 0o644,
                         dir_fd=self._heatmap_fd)
            with os.fdopen(fd, "wb") as out:
                if not stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                out.write(png.getvalue())
        except OSError as err:
            self.warn(f"cannot write the heatmap {shown(picture)} in {shown(str(self.heatmap_dir))} "
                      f"({err.strerror or err}); the alert is logged without it")
            return None
        return str(self.heatmap_dir / picture)

    def line(self, name: str, signature: list[int] | None, size: int | None, digest: str | None,
             results: list[dict[str, Any]], error: str | None) -> dict[str, Any]:
        line = {"schema": SCHEMA_VERSION, "time": utc_now(), "file": name, "size": size, "sha256": digest,
                "results": [summarise(result, self.normal_classes) for result in results],
                "alert": False, "error": error}
        line["alert"] = any(result["alert"] for result in line["results"])
        if signature is not None:
            self.done[name] = signature
        return line

    def append(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        with os.fdopen(open_alert_log(self.alert_log), "a") as log:
            for line in lines:
                log.write(json.dumps(line, sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())
        self.save_state()
        for line in lines:  # one printed line per file, whatever its name: every untrusted part through shown
            if line["error"]:
                print(f"skipped {shown(line['file'])}: {shown(line['error'])}", file=self.out, flush=True)
            elif line["alert"]:
                said = "; ".join(describe(result) for result in line["results"] if result["alert"])
                print(f"ALERT {shown(line['file'])}: {shown(said)}", file=self.out, flush=True)

    # ----------------------------------------------------------------- watching

    def run(self, poll: bool = False, stop: threading.Event | None = None, interval: float = 0.1,
            watching: Callable[[], None] | None = None) -> None:
        """Score what is pending, then watch until `stop` is set (or forever); files settle before scoring.
        `watching` is called once the folder is watched: a file arriving from then on is scored."""
        stop = stop or threading.Event()
        touched: dict[Path, float] = {}
        lock = threading.Lock()

        def note(path: str, event_type: str = "closed") -> None:
            candidate = Path(path)
            if not self.wanted(candidate):
                return
            if event_type == "created" and not poll:
                # inotify notes a regular file when its writer closes it; a link, a pipe, a socket or a
                # folder is never written and closed, so it is noted (and skipped, with its reason) now
                try:
                    if stat.S_ISREG(os.lstat(candidate).st_mode):
                        return
                except OSError:
                    return
            with lock:
                touched[candidate] = time.monotonic()

        observer = start_observer(self.folder, note, poll)
        with lock:  # after the observer started: a file arriving meanwhile is seen by one or the other
            for path in self.pending():
                touched.setdefault(path, 0.0)
        try:
            if watching is not None:
                watching()
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
                            if os.path.lexists(path):
                                touched[path] = time.monotonic()  # still changing: look again later
                    # in groups, so that a stop asked for during a burst is heeded within one group; what is
                    # left is still pending and is scored at the next start
                    for start in range(0, len(settled), STOP_CHECK_FILES):
                        if stop.is_set():
                            break
                        self.score(settled[start:start + STOP_CHECK_FILES])
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
        time.sleep(min(self.settle - age, self.settle))  # a modification time in the future waits no longer
        return self.signature(path) == before


STOP_CHECK_FILES = 32  # files scored between two looks at the stop event


def open_heatmap_folder(folder: Path) -> int:
    """The heatmap folder (made when absent), opened as a folder without following a link: pictures are created
    through this descriptor, so a link planted later under its name changes nothing."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        try:
            folder.mkdir(parents=True)
        except OSError as err:
            raise MonitorError(f"cannot make the heatmap folder {shown(str(folder))}: {err.strerror}") from None
        info = os.lstat(folder)
    except OSError as err:
        raise MonitorError(f"cannot use the heatmap folder {shown(str(folder))}: {err.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MonitorError(f"the heatmap folder {shown(str(folder))} is {kind_of(info.st_mode)}: refusing to write "
                           "there; remove it, or give --heatmaps a folder")
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | CLOEXEC)


def start_observer(folder: Path, note, poll: bool):
    """watchdog's inotify observer, noting files when their writer closes them or they are moved in (and
    anything that is not a regular file when it is created); or its polling observer, noting every change
    (then only --settle tells a pausing writer from a finished one). Polling looks at entries with lstat, so
    a link to a folder is never walked into."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserverVFS

    ready_events = ("created", "modified", "moved") if poll else ("created", "closed", "moved")

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if event.event_type in ready_events and (not event.is_directory or event.event_type != "modified"):
                note(getattr(event, "dest_path", "") or event.src_path, event.event_type)

    observer = (PollingObserverVFS(os.lstat, os.scandir, polling_interval=0.2) if poll else Observer())
    observer.schedule(Handler(), str(folder), recursive=True)
    observer.start()
    return observer


