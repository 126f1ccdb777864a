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
  alert log and the state are never written through a symbolic link.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vapm.core.errors import VapmError
from vapm.data.ingest.limits import DEFAULT_MAX_MEMBER_BYTES, mib

ALERT_LOG = "alerts.jsonl"
STATE_FILE = ".vapm-monitor-state.json"
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")
SCHEMA_VERSION = 1
DEFAULT_MAX_FILE_BYTES = DEFAULT_MAX_MEMBER_BYTES  # ingest's per-member limit (ingest.max_member_mb: 64)
MAX_FILE_MB = float(2**40)  # the largest --max-file-mb (as for ingest's limits: beyond, byte counts overflow)
READ_BLOCK = 2**20  # a file that grows while it is read is read on in blocks of this size
STATE_MAX_BYTES = 256 * 2**20  # a larger state file is ignored (about 4 million files remembered)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class MonitorError(VapmError, ValueError):
    """The monitor cannot start as asked (no such folder, no model, ...) or cannot write its alert log."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def shown(text: str) -> str:
    """Untrusted text made safe to print on a terminal: every file name, and every reason or path that may
    quote one, goes through here before it is printed (the alert log is JSON, escaped by json.dumps).

    Text whose every character is printable is shown as it is; any other is shown in Python's quoted form
    with escapes, as ingest shows member names: 'x\\x1b[2K\\rALERT y.wav' or 'gnp.\\u202eevil.wav'.
    str.isprintable is False for C0 and C1 controls (ESC, CR, LF, TAB, CSI U+009B), DEL, format characters
    (bidi overrides such as U+202E, zero-width characters), line and paragraph separators (U+2028, U+2029),
    spaces other than ' ', and the unpaired surrogates that stand for undecodable bytes in a name. So no
    name can move the cursor, erase or recolour a line, reorder it, or start a new one.
    """
    return text if text.isprintable() else repr(text)


def kind_of(mode: int) -> str:
    """What an entry is, from its lstat mode: 'a regular file', 'a symbolic link', 'a named pipe (FIFO)', ..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


def not_regular(mode: int) -> str | None:
    """Why an entry of this kind is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = kind_of(mode)
    return f"{kind}, not a regular file: not opened" if kind != "not a regular file" else f"{kind}: not opened"


def read_bounded(fd: int, limit: int, expected: int) -> bytes | None:
    """The content of an open file, reading at most `limit` + 1 bytes in all: None when it holds more.

    The first read asks for the size `stat` gave (+ 1 byte, to see the end), so a file is held once; a file
    that grew meanwhile is read on in READ_BLOCK blocks until the limit is passed.
    """
    blocks: list[bytes] = []
    total, want = 0, min(max(expected, 0), limit) + 1
    while total <= limit:
        block = os.read(fd, min(want, limit + 1 - total))
        if not block:
            break
        blocks.append(block)
        total += len(block)
        want = READ_BLOCK
    if total > limit:
        return None
    return blocks[0] if len(blocks) == 1 else b"".join(blocks)


def valid_signature(value: Any) -> bool:
    """[size, mtime_ns], as the monitor writes them (mtime may be negative: a file dated before 1970)."""
    return (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
            and value[0] >= 0)


def _not_through_link(path: Path) -> Path:
    """An absolute path whose folder is resolved but whose last part is kept: a link planted under the alert
    log's or the state's name is then refused or replaced, never written through."""
    path = Path(path)
    return path.parent.resolve() / path.name


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
    done: dict[str, list[int]] = field(default_factory=dict)  # relative path -> [size, mtime_ns] scored
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _state_warned: bool = False

    def __post_init__(self) -> None:
        self.folder = self.folder.resolve()
        self.alert_log = _not_through_link(self.alert_log or self.folder / ALERT_LOG)
        self.state_file = _not_through_link(self.state_file or self.folder / STATE_FILE)
        if isinstance(self.max_file_bytes, bool) or not isinstance(self.max_file_bytes, int) \
                or self.max_file_bytes < 1:
            raise MonitorError(f"the file size limit must be a whole number of bytes, at least 1, "
                               f"got {self.max_file_bytes!r}")
        self.check_alert_log()
        self.load_state()

    # ----------------------------------------------------------------- its own files

    def check_alert_log(self) -> None:
        """Refuse to start on an alert log that is a link, a pipe or anything but a regular file."""
        try:
            mode = os.lstat(self.alert_log).st_mode
        except FileNotFoundError:
            return
        except OSError as err:
            raise MonitorError(f"cannot use the alert log {shown(str(self.alert_log))}: {err.strerror}") from None
        if stat.S_ISLNK(mode):
            raise MonitorError(f"the alert log {shown(str(self.alert_log))} is a symbolic link: refusing to write "
                               f"through it; remove it, or give --alerts a file")
        if not stat.S_ISREG(mode):
            raise MonitorError(f"the alert log {shown(str(self.alert_log))} is {kind_of(mode)}: "
                               f"remove it, or give --alerts a file")

    def open_alert_log(self) -> int:
        """The alert log opened for appending, refusing links (O_NOFOLLOW) and never blocking on a pipe."""
        try:
            fd = os.open(self.alert_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC,
                         0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                self.check_alert_log()  # names what is there instead
            raise MonitorError(f"cannot write the alert log {shown(str(self.alert_log))}: {err.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.check_alert_log()
            raise MonitorError(f"the alert log {shown(str(self.alert_log))} is not a regular file")
        return fd

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.out, flush=True)

    def load_state(self) -> None:
        """What was scored, from the state file; anything but what `save_state` writes only costs rescoring
        (one warning line), and the state is then rewritten."""
        problem, content = None, None
        try:
            fd = os.open(self.state_file, os.O_RDONLY | _NONBLOCK | _CLOEXEC)  # a pipe never blocks
        except FileNotFoundError:
            return
        except OSError as err:
            problem = f"cannot be read ({err.strerror})"
        else:
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    problem = f"is {kind_of(info.st_mode)}, not a regular file"
                elif info.st_size > STATE_MAX_BYTES:
                    problem = f"is {mib(info.st_size)}, more than the {mib(STATE_MAX_BYTES)} a state may take"
                else:
                    raw = read_bounded(fd, STATE_MAX_BYTES, info.st_size)
                    if raw is None:
                        problem = f"grew past {mib(STATE_MAX_BYTES)} while it was read"
                    else:
                        content = json.loads(raw)
            except OSError as err:
                problem = f"cannot be read ({err.strerror})"
            except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep
                problem = f"is not valid JSON ({type(err).__name__})"
            finally:
                os.close(fd)
        if problem is None and not isinstance(content, dict):
            problem = f"holds {json_kind(content)}, not an object of file -> [size, mtime_ns]"
        if problem is None:
            bad = [name for name, value in content.items() if not valid_signature(value)]
            self.done = {name: value for name, value in content.items() if name not in bad}
            if bad:
                problem = f"has {len(bad)} of {len(content)} entries that are not [size, mtime_ns]"
        if problem is not None:
            ignored = "those entries are ignored" if self.done else "it is ignored"
            self.warn(f"the state file {shown(str(self.state_file))} {problem}; {ignored} (files it should "
                      f"remember are scored again) and it is rewritten")
            self.save_state()

    def save_state(self) -> None:
        """Write the state atomically: a new temporary file in the same folder, then os.replace (a crash
        leaves the old state or the new, never half of one; a link under its name is replaced, not followed)."""
        try:
            fd, temporary = tempfile.mkstemp(prefix=self.state_file.name + ".", suffix=".tmp",
                                             dir=self.state_file.parent)
            try:
                with os.fdopen(fd, "w") as handle:
                    os.fchmod(handle.fileno(), 0o644)  # as the state was written before (mkstemp makes it 0600)
                    handle.write(json.dumps(self.done, sort_keys=True))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, self.state_file)
            except BaseException:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
                raise
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
        try:
            return Path(os.path.abspath(path)).relative_to(self.folder).as_posix()
        except ValueError:
            return None

    def refusal(self, path: Path, info: os.stat_result) -> str | None:
        """Why this entry is not read (from its lstat), or None."""
        if stat.S_ISLNK(info.st_mode):
            if not os.path.exists(path):
                where = "to nothing (dangling, or a loop)"
            elif self.key(os.path.realpath(path)) is None:
                where = "to outside the folder"
            else:
                where = "to a file in the folder (that file is scored under its own name)"
            return f"a symbolic link {where}: links are not followed"
        reason = not_regular(info.st_mode)
        if reason is None and info.st_size > self.max_file_bytes:
            reason = (f"{mib(info.st_size)} ({info.st_size:,} bytes), more than the limit of "
                      f"{mib(self.max_file_bytes)} (--max-file-mb): not read")
        return reason

    def read(self, path: Path) -> tuple[bytes | None, str | None]:
        """(content, None), or (None, why not); (None, None) when it is gone. The entry is opened without
        following a link and without blocking, then checked again from the open file: a regular file, inside
        the folder, within the size limit; and it is read no further than the limit + 1 byte."""
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
        except FileNotFoundError:
            return None, None
        except OSError as err:
            try:
                info = os.lstat(path)
            except OSError:
                return None, None
            return None, self.refusal(path, info) or f"cannot read it ({err.strerror})"
        try:
            info = os.fstat(fd)
            reason = self.refusal(path, info)
            if reason is not None:
                return None, reason
            opened = self.opened_path(fd, path)
            if opened.endswith(" (deleted)"):
                return None, None
            if self.key(opened) is None:
                return None, "resolves to outside the folder (a folder on its path is a link): not read"
            data = read_bounded(fd, self.max_file_bytes, info.st_size)
            if data is None:
                return None, f"grew past the limit of {mib(self.max_file_bytes)} (--max-file-mb) while it was read"
            return data, None
        except OSError as err:
            return None, f"cannot read it ({err.strerror})"
        finally:
            os.close(fd)

    @staticmethod
    def opened_path(fd: int, path: Path) -> str:
        """Where the open file really is (Linux: /proc/self/fd), else where its path resolves to now."""
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return os.path.realpath(path)

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
            if batch:
                for (name, _), answer in zip(batch, model.predict_files(batch)):
                    answers[name].append(answer)
        lines = []
        for name, path, signature, data in files:
            results = answers[name]
            errors = [r["error"] for r in results if "error" in r]
            lines.append(self.line(name, signature, signature[0], hashlib.sha256(data).hexdigest(),
                                   [r for r in results if "error" not in r], "; ".join(errors) or None))
        return lines

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
        with os.fdopen(self.open_alert_log(), "a") as log:
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

    def run(self, poll: bool = False, stop: threading.Event | None = None, interval: float = 0.1) -> None:
        """Score what is pending, then watch until `stop` is set (or forever); files settle before scoring."""
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
        time.sleep(min(self.settle - age, self.settle))  # a modification time in the future waits no longer
        return self.signature(path) == before


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", list: "a list", str: "a string", int: "a number", float: "a number",
            dict: "an object"}.get(type(value), type(value).__name__)


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


def load_models(model_dirs: list[str]) -> list[Any]:
    """Each model loaded once, and warmed up on a synthetic file."""
    from vapm.serving.loading import load_model

    models = [load_model(folder) for folder in model_dirs]
    for model in models:
        warm_up(model)
    return models
