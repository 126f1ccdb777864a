"""`vapm monitor` against a hostile folder (issue 23, item 3), with real files and the real monitor.

Whoever writes to the watched folder is not trusted. Each case is built here on disk and put through the
monitor in-process (`Monitor.score(Monitor.pending())`, what `--once` runs) and through the command itself
as a subprocess, `--once` and watching (inotify and polling). Every printed line must be one line of
printable text; every file named like a data file gets exactly one alert-log line; nothing outside the folder
is opened or written; a pipe never blocks; a file over the size limit is never read; no traceback.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile as sf

from tests.serving.test_serving import RATE, build_acoustic_model
from vapm.cli.monitor import main as monitor_main
from vapm.data.synth.acoustic import render_clip
from vapm.serving.loading import load_model
from vapm.serving.monitor import ALERT_LOG, STATE_FILE, Monitor, MonitorError
from vapm.serving.untrusted_files import read_bounded, shown

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO_ROOT / "docs" / "alert.schema.json").read_text())
NORMAL = "NoSuchClass"  # every class the model names is then an alert: each scored file prints one ALERT line
GIB = 2**30
MIB = 2**20

# Names that tried to forge or hide lines on the operator's terminal. Each must print as one line of
# printable text, and the alert log must keep the true name.
HOSTILE_NAMES = {
    "ansi_erase_line": "\x1b[2K\rall files ok.dat",
    "ansi_colour": "\x1b[31mred\x1b[0m.dat",
    "newline_forged_alert": "x.dat\nALERT forged.dat: acoustic_cnn says Bearing (99.9%)\nok.dat",
    "carriage_return": "real\rALERT fake.dat",
    "tab": "a\tb.dat",
    "line_separator_u2028": "line\u2028ALERT fake.dat",
    "paragraph_separator_u2029": "para\u2029ALERT fake.dat",
    "rtl_override_u202e": "gnp\u202eevil.dat",
    "c1_csi_u009b": "\u009b2Kcsi.dat",
    "delete": "del\x7f.dat",
    "bell": "\x07bell.dat",
    "undecodable_bytes": os.fsdecode(b"bad\xff\xfe.dat"),
    "printable_forged_alert": "ALERT forged.dat: acoustic_cnn says Bearing (99.9%).dat",
}


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-monitor-model") / "acoustic_cnn"
    build_acoustic_model(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir)


def dat_bytes(seed: int) -> bytes:
    return "\n".join(f"{v:.6f}" for v in render_clip("Bearing", 50_000, RATE, np.random.default_rng(seed))).encode()


def wav_bytes(seed: int) -> bytes:
    clip = render_clip("Healthy", 132_300, 44_100.0, np.random.default_rng(seed))
    buffer = io.BytesIO()
    sf.write(buffer, clip / np.abs(clip).max() * 0.5, 44_100, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def read_log(folder: Path) -> list[dict]:
    path = folder / ALERT_LOG
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def make(folder: Path, loaded, **changes) -> Monitor:
    return Monitor(folder, [loaded], normal_classes={NORMAL}, out=io.StringIO(), **changes)


def once(monitor: Monitor, seconds: float = 60) -> list[str]:
    """What `--once` does, in a thread that must finish (a pipe that blocked would hang it); the printed lines."""
    thread = threading.Thread(target=lambda: monitor.score(monitor.pending()), daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), "the monitor blocked"
    return printed(monitor)


def printed(monitor: Monitor) -> list[str]:
    return monitor.out.getvalue().splitlines()


def assert_one_safe_line_each(lines: list[str], log: list[dict]) -> None:
    """Each printed line is printable text (no control, format or separator character), starts with what the
    monitor prints, and there is exactly one per alert-log line that is an error or an alert."""
    for line in lines:
        assert line.isprintable(), line
        assert line.startswith(("skipped ", "ALERT ", "warning: ", "watching ", "stopped")), line
    shown_lines = [line for line in lines if line.startswith(("skipped ", "ALERT "))]
    assert len(shown_lines) == len([entry for entry in log if entry["error"] or entry["alert"]]), (lines, log)
    for entry in log:
        jsonschema.validate(entry, SCHEMA)
        kind = "skipped" if entry["error"] else "ALERT"
        assert sum(line.startswith(f"{kind} {shown(entry['file'])}: ") for line in shown_lines) == 1, (entry, lines)


@contextmanager
def opened_files():
    """Every path os.open is given while inside (the monitor opens files only through os.open)."""
    seen: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        seen.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    os.open = spy
    try:
        yield seen
    finally:
        os.open = real_open


def make_socket(path: Path) -> socket.socket:
    """A Unix socket at `path` (bound from its folder: socket paths are limited to 108 bytes)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        server = socket.socket(socket.AF_UNIX)
        server.bind(path.name)
    finally:
        os.chdir(here)
    return server


def sparse(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        os.truncate(handle.fileno(), size)


# ----------------------------------------------------------------------------------------- names


def test_shown_escapes_every_character_a_terminal_acts_on():
    unsafe = ([chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
              + ["\u00a0", "\u200b", "\u200e", "\u200f", "\u2028", "\u2029", "\u202a", "\u202b", "\u202c",
                 "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\udcff"])
    for char in unsafe:
        text = shown(f"a{char}b.dat")
        assert text.isprintable() and char not in text and "\n" not in text, repr(char)
        assert eval(text) == f"a{char}b.dat"  # Python's quoted form: the exact name can be read back
    for fine in ("plain.dat", "a b.dat", "it's.dat", "Ελληνικά δεδομένα.wav", "ALERT x.dat: fake"):
        assert shown(fine) == fine


@pytest.mark.parametrize("name", list(HOSTILE_NAMES.values()), ids=list(HOSTILE_NAMES))
def test_hostile_name_prints_one_escaped_line(loaded, tmp_path, name):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / name).write_bytes(b"junk\n")              # cannot be scored: one "skipped" line
    (folder / f"good {name}").write_bytes(dat_bytes(1))  # scored: one "ALERT" line (no class is normal)
    monitor = make(folder, loaded)
    lines = once(monitor)
    log = read_log(folder)
    assert sorted(entry["file"] for entry in log) == sorted([name, f"good {name}"])  # the true names
    assert_one_safe_line_each(lines, log)
    assert len(lines) == 2 and sum(line.startswith("ALERT ") for line in lines) == 1
    assert lines[[entry["file"] for entry in log].index(f"good {name}")].startswith(f"ALERT {shown('good ' + name)}: ")
    assert "junk" in (folder / ALERT_LOG).read_text()  # the reason is logged


# ----------------------------------------------------------------------------------------- size


def test_oversize_file_is_refused_from_stat_and_never_opened(loaded, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    sparse(folder / "huge.dat", 3 * GIB)            # 3 GiB, no disk used
    sparse(folder / "over_by_one.dat", MIB + 1)
    (folder / "at_limit.dat").write_bytes(b"0\n" * (MIB // 2))  # exactly the limit: read (and refused by the decoder)
    (folder / "good.dat").write_bytes(dat_bytes(2))
    monitor = make(folder, loaded, max_file_bytes=MIB)
    with opened_files() as seen:
        lines = once(monitor)
    assert not any(path.endswith(("huge.dat", "over_by_one.dat")) for path in seen)  # refused before opening
    assert any(path.endswith("at_limit.dat") for path in seen)
    log = {entry["file"]: entry for entry in read_log(folder)}
    assert log["huge.dat"]["error"] == ("huge.dat: 3072.0 MiB (3,221,225,472 bytes), more than the limit of 1.0 MiB "
                                        "(--max-file-mb): not read")
    assert log["huge.dat"]["size"] == 3 * GIB and log["huge.dat"]["sha256"] is None
    assert "(1,048,577 bytes), more than the limit" in log["over_by_one.dat"]["error"]
    assert "--max-file-mb" not in log["at_limit.dat"]["error"] and log["at_limit.dat"]["size"] == MIB
    assert log["good.dat"]["error"] is None
    assert_one_safe_line_each(lines, list(log.values()))
    assert monitor.pending() == []  # remembered: not refused again until it changes


def test_reading_stops_at_the_limit_plus_one_byte(tmp_path):
    """A file that grew after its stat (or whose stat lies) is read no further than limit + 1 bytes."""
    path = tmp_path / "grows.dat"
    path.write_bytes(b"0" * (3 * MIB))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_bounded(fd, MIB, expected=10) is None      # stat said 10 bytes: blocks until over the limit
        assert os.lseek(fd, 0, os.SEEK_CUR) == MIB + 1          # read so far: limit + 1, not 3 MiB
        os.lseek(fd, 0, os.SEEK_SET)
        assert read_bounded(fd, 3 * MIB, expected=3 * MIB) == b"0" * (3 * MIB)
    finally:
        os.close(fd)


def test_a_burst_of_large_files_is_scored_in_bounded_batches(loaded, tmp_path, monkeypatch):
    """Each file is within the limit, together they are not: no batch holds more than the limit plus one file."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i in range(12):
        (folder / f"large_{i:02d}.dat").write_bytes(b"0\n" * (MIB // 2 - 1000))  # just under 1 MiB each
    (folder / "good.dat").write_bytes(dat_bytes(2))
    batches, real_predict = [], loaded.predict_files
    monkeypatch.setattr(loaded, "predict_files", lambda files: batches.append(sum(len(d) for _, d in files))
                        or real_predict(files))
    monitor = make(folder, loaded, max_file_bytes=MIB)
    lines = once(monitor)
    assert len(batches) >= 6 and max(batches) <= 2 * MIB and sum(batches) == sum(
        p.stat().st_size for p in folder.glob("*.dat"))
    log = read_log(folder)
    assert len(log) == 13 and [entry["file"] for entry in log] == sorted(entry["file"] for entry in log)
    assert_one_safe_line_each(lines, log)


# ----------------------------------------------------------------------------------------- what is not a file


def plant_special(kind: str, folder: Path, outside: Path) -> tuple[str, str]:
    """Make one entry of `kind` in the folder; returns its name and what its reason must say."""
    (outside / "secret.dat").write_bytes(dat_bytes(3))
    if kind == "link_to_file_outside":
        os.symlink(outside / "secret.dat", folder / "link.dat")
        return "link.dat", "a symbolic link to outside the folder: links are not followed"
    if kind == "relative_link_outside":
        os.symlink(Path("..") / outside.name / "secret.dat", folder / "link.dat")
        return "link.dat", "a symbolic link to outside the folder: links are not followed"
    if kind == "link_to_file_inside":
        os.symlink("good.dat", folder / "link.dat")
        return "link.dat", "a symbolic link to a file in the folder (that file is scored under its own name)"
    if kind == "dangling_link":
        os.symlink("nowhere.dat", folder / "link.dat")
        return "link.dat", "a symbolic link to nothing (dangling, or a loop)"
    if kind == "link_loop":
        os.symlink("link.dat", folder / "link.dat")
        return "link.dat", "a symbolic link to nothing (dangling, or a loop)"
    if kind == "link_to_folder_outside":
        os.symlink(outside, folder / "folder.dat")
        return "folder.dat", "a symbolic link to outside the folder"
    if kind == "link_to_dev_zero":
        os.symlink("/dev/zero", folder / "zero.dat")
        return "zero.dat", "a symbolic link to outside the folder"
    if kind == "fifo":
        os.mkfifo(folder / "pipe.dat")
        return "pipe.dat", "a named pipe (FIFO), not a regular file: not opened"
    if kind == "socket":
        make_socket(folder / "socket.wav")
        return "socket.wav", "a socket, not a regular file: not opened"
    if kind == "folder_named_like_a_file":
        (folder / "clip.wav").mkdir()
        (folder / "clip.wav" / "inside.dat").write_bytes(dat_bytes(4))  # still scored: folders are entered
        return "clip.wav", "a folder, not a file"
    raise AssertionError(kind)


SPECIAL = ["link_to_file_outside", "relative_link_outside", "link_to_file_inside", "dangling_link", "link_loop",
           "link_to_folder_outside", "link_to_dev_zero", "fifo", "socket", "folder_named_like_a_file"]


@pytest.mark.parametrize("kind", SPECIAL)
def test_what_is_not_a_regular_file_in_the_folder_is_skipped_with_a_reason(loaded, tmp_path, kind):
    folder, outside = tmp_path / "incoming", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "good.dat").write_bytes(dat_bytes(5))
    name, reason = plant_special(kind, folder, outside)
    monitor = make(folder, loaded)
    with opened_files() as seen:
        lines = once(monitor)
    assert not any(str(outside) in path or path.endswith(name) for path in seen)  # never opened
    log = {entry["file"]: entry for entry in read_log(folder)}
    assert log[name]["error"].startswith(f"{name}: {reason}") and log[name]["size"] is None
    assert log["good.dat"]["error"] is None and log["good.dat"]["alert"]
    expected = {"good.dat", name} | ({"clip.wav/inside.dat"} if kind == "folder_named_like_a_file" else set())
    assert set(log) == expected
    assert_one_safe_line_each(lines, list(log.values()))
    assert make(folder, loaded).pending() == []  # remembered, like any skipped file: a restart is quiet


def test_a_file_reached_through_a_linked_folder_is_not_read(loaded, tmp_path):
    """Walking never enters a linked folder; a path through one (as an event could give) is refused once open."""
    folder, outside = tmp_path / "incoming", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "secret.dat").write_bytes(dat_bytes(6))
    os.symlink(outside, folder / "linked")
    monitor = make(folder, loaded)
    assert monitor.pending() == []  # the link has no data-file name, and is not entered
    lines = monitor.score([folder / "linked" / "secret.dat"])
    assert lines[0]["error"] == ("linked/secret.dat: resolves to outside the folder (a folder on its path is a link): "
                                 "not read")
    assert_one_safe_line_each(printed(monitor), lines)


# ----------------------------------------------------------------------------------------- the state file


STATES = {
    "null": b"null",
    "list": b'[["good.dat", [1, 2]]]',
    "number": b"42",
    "string": b'"good.dat"',
    "boolean": b"true",
    "empty": b"",
    "truncated": b'{"good.dat": [460',
    "binary": bytes(range(256)) * 4,
    "wrong_value_types": b'{"good.dat": "scored", "other.dat": [1.5, 2], "third.dat": [true, 1], "x.dat": null}',
    "negative_size": b'{"good.dat": [-1, 5]}',
    "nested_too_deep": b"[" * 100_000 + b"]" * 100_000,
    "huge_integer": b'{"good.dat": [' + b"9" * 5000 + b", 1]}",
}


def plant_state(kind: str, path: Path) -> None:
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "unreadable":
        path.write_text("{}")
        path.chmod(0)
    else:
        path.write_bytes(STATES[kind])


@pytest.mark.parametrize("kind", [*STATES, "folder", "fifo", "unreadable"])
def test_a_state_file_that_is_not_ours_costs_only_rescoring(loaded, tmp_path, kind, monkeypatch):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "good.dat").write_bytes(dat_bytes(7))
    once(make(folder, loaded))
    state = folder / STATE_FILE
    plant_state(kind, state)
    if kind == "unreadable" and os.geteuid() == 0:  # root reads a file of mode 000: answer as for anyone else
        real_open = os.open

        def denied(path, *args, **kwargs):
            if os.path.realpath(path) == os.path.realpath(state):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    restarted = make(folder, loaded)
    warnings = printed(restarted)
    assert warnings[0].startswith("warning: the state file ") and "scored again" in warnings[0]
    if kind == "folder":  # cannot be replaced by a file: one more warning, once, and the monitor goes on
        assert warnings[1].startswith("warning: cannot save the state file ") and len(warnings) == 2
    else:
        assert len(warnings) == 1
    assert restarted.pending() == [folder / "good.dat"]  # what it cost: rescoring
    lines = once(restarted)
    monkeypatch.undo()
    assert [entry["file"] for entry in read_log(folder)] == ["good.dat", "good.dat"]
    assert len(lines) == len(warnings) + 1 and lines[-1].startswith("ALERT good.dat: ")
    assert all(line.isprintable() for line in lines)
    if kind == "folder":
        assert state.is_dir()
        return
    saved = json.loads(state.read_text())
    assert list(saved) == ["good.dat"] and state.is_file() and not state.is_symlink()
    assert [p.name for p in folder.iterdir() if p.name.startswith(STATE_FILE + ".")] == []  # no temporary left
    assert make(folder, loaded).pending() == []


def test_alert_log_and_state_planted_as_links_are_never_written_through(loaded, model_dir, tmp_path, capsys):
    folder, outside = tmp_path / "incoming", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "good.dat").write_bytes(dat_bytes(8))
    victim = outside / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, folder / STATE_FILE)
    os.symlink(victim, folder / f"{STATE_FILE}.tmp")  # the temporary name the state was once written under
    lines = once(make(folder, loaded))
    assert victim.read_text() == "precious"
    assert not (folder / STATE_FILE).is_symlink()
    assert list(json.loads((folder / STATE_FILE).read_text())) == ["good.dat"]
    assert lines[0].startswith("warning: the state file ") and "not valid JSON" in lines[0]

    os.symlink(victim, folder / "alerts2.jsonl")
    with pytest.raises(MonitorError, match="is a symbolic link: refusing to write through it"):
        make(folder, loaded, alert_log=folder / "alerts2.jsonl")
    os.mkfifo(folder / "alerts3.jsonl")
    with pytest.raises(MonitorError, match=r"is a named pipe \(FIFO\): remove it"):
        make(folder, loaded, alert_log=folder / "alerts3.jsonl")
    (folder / "later.dat").write_bytes(dat_bytes(9))
    planted_later = make(folder, loaded)
    (folder / ALERT_LOG).rename(folder / "old.jsonl")
    os.symlink(victim, folder / ALERT_LOG)  # planted while the monitor runs
    with pytest.raises(MonitorError, match="is a symbolic link"):
        planted_later.score(planted_later.pending())
    assert victim.read_text() == "precious"

    # the command: one line naming the link, exit 1, no traceback
    assert monitor_main([str(folder), "--model", str(model_dir), "--once"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"monitor: the alert log {folder.resolve() / ALERT_LOG} is a symbolic "
                                            f"link: refusing to write through it; remove it, or give --alerts a file")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e308", "abc", "\x1b[2Kx"])
def test_max_file_mb_must_be_a_sane_number(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stopped:
        monitor_main([str(tmp_path), "--model", str(tmp_path), f"--max-file-mb={value}"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vapm monitor: error: argument --max-file-mb: ") and err[-1].isprintable()


# ----------------------------------------------------------------------------------------- the command


def plant_catalogue(folder: Path, outside: Path, tag: str) -> dict[str, str | None]:
    """Hostile entries of every kind, named with `tag`; returns each name and what its reason must hold (None
    for a file that is scored)."""
    (outside / f"secret{tag}.dat").write_bytes(dat_bytes(10))
    expected: dict[str, str | None] = {}
    for i, name in enumerate(["\x1b[2K\rall ok\nALERT forged.dat: says Bearing.dat", "gnp\u202eevil.wav",
                              "line\u2028ALERT x.dat", "tab\tand\rcr.dat"]):
        name = name.replace(".", f"{tag}.", 1) if "." in name else name
        (folder / name).write_bytes(b"junk\n")
        expected[name] = "junk" if name.endswith(".dat") else "cannot decode audio"
        (folder / f"good{i}{tag} {name}").write_bytes(dat_bytes(11 + i) if name.endswith(".dat") else wav_bytes(11 + i))
        expected[f"good{i}{tag} {name}"] = None
    os.symlink(outside / f"secret{tag}.dat", folder / f"out{tag}.dat")
    expected[f"out{tag}.dat"] = "a symbolic link to outside the folder"
    os.symlink("nowhere", folder / f"dangling{tag}.wav")
    expected[f"dangling{tag}.wav"] = "a symbolic link to nothing"
    os.mkfifo(folder / f"pipe{tag}.dat")
    expected[f"pipe{tag}.dat"] = "a named pipe (FIFO)"
    make_socket(folder / f"sock{tag}.wav")
    expected[f"sock{tag}.wav"] = "a socket"
    sparse(folder / f"huge{tag}.dat", 3 * GIB)
    expected[f"huge{tag}.dat"] = "3072.0 MiB (3,221,225,472 bytes), more than the limit of 64.0 MiB (--max-file-mb)"
    (folder / f"clip{tag}.wav").write_bytes(wav_bytes(20))
    expected[f"clip{tag}.wav"] = None
    return expected


def command(folder: Path, model_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vapm", "monitor", str(folder), "--model", str(model_dir), "--normal", NORMAL,
            *extra]


def environment(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3",
            "HOME": str(tmp_path)}


def run_measured(arguments: list[str], tmp_path: Path, seconds: float = 300) -> tuple[int, str, str, int]:
    """Run to the end; exit status, stdout, stderr and the peak resident memory in bytes (wait4's ru_maxrss)."""
    with (tmp_path / "stdout").open("w+") as out, (tmp_path / "stderr").open("w+") as err:
        process = subprocess.Popen(arguments, stdout=out, stderr=err, env=environment(tmp_path))
        deadline = time.monotonic() + seconds
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError("the monitor did not finish")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return process.returncode, out.read(), err.read(), usage.ru_maxrss * 1024


def check_run(lines: list[str], log: list[dict], expected: dict[str, str | None]) -> None:
    assert sorted(entry["file"] for entry in log) == sorted(expected), log
    for entry in log:
        reason = expected[entry["file"]]
        if reason is None:
            assert entry["error"] is None and entry["alert"], entry
        else:
            assert reason in entry["error"], entry
    assert_one_safe_line_each(lines, log)


def test_once_command_on_a_hostile_folder(model_dir, tmp_path):
    folder, outside = tmp_path / "incoming", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / STATE_FILE).write_text("null")
    expected = plant_catalogue(folder, outside, "")
    code, out, err, peak = run_measured(command(folder, model_dir, "--once"), tmp_path)
    assert code == 0 and "Traceback" not in err, err
    lines = out.splitlines()
    assert lines[0].startswith("warning: the state file ") and "holds null" in lines[0]
    assert lines[1].startswith("watching ")
    check_run(lines, read_log(folder), expected)

    # restarted with everything still there (the links too): nothing scored twice, nothing printed
    again_code, again_out, again_err, again_peak = run_measured(command(folder, model_dir, "--once"), tmp_path)
    assert again_code == 0 and "Traceback" not in again_err and len(read_log(folder)) == len(expected)
    assert [line for line in again_out.splitlines() if not line.startswith("watching ")] == []
    # the 3 GiB file costs no memory: the first run peaks no higher than the restart, which scores nothing
    # (before, the file was read whole: 3.99 GB peak against 0.85 GB)
    print(f"peak RSS: with a 3 GiB file {peak / MIB:.0f} MiB, restart scoring nothing {again_peak / MIB:.0f} MiB")
    assert peak - again_peak < 100 * MIB, (peak, again_peak)


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_watch_command_on_a_hostile_folder(model_dir, tmp_path, poll):
    folder, outside = tmp_path / "incoming", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / STATE_FILE).write_bytes(b"\x00\xffgarbage")
    expected = plant_catalogue(folder, outside, "")  # there at start-up: the links too
    arguments = command(folder, model_dir, "--settle", "0.2", *(["--poll"] if poll else []))
    with (tmp_path / "stdout").open("w+") as out, (tmp_path / "stderr").open("w+") as err:
        process = subprocess.Popen(arguments, stdout=out, stderr=err, env=environment(tmp_path))
        try:
            wait_for_log(folder, expected, process, err)
            later = plant_catalogue(folder, outside, "-later")  # dropped while it watches
            future = folder / "future.dat"  # dated 2100: settling must not wait for that date
            future.write_bytes(dat_bytes(30))
            os.utime(future, (4_102_444_800, 4_102_444_800))
            later["future.dat"] = None
            expected.update(later)
            wait_for_log(folder, expected, process, err)
            time.sleep(1.0)  # nothing more may come: each file once
            assert process.poll() is None, "the monitor stopped"
        finally:
            os.kill(process.pid, signal.SIGINT)
            code = process.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        out_text, err_text = out.read(), err.read()
    assert code == 0 and "Traceback" not in err_text, err_text
    lines = out_text.splitlines()
    assert lines[0].startswith("warning: the state file ") and "not valid JSON" in lines[0]
    assert lines[1].startswith("watching ") and lines[-1] == "stopped"
    check_run(lines, read_log(folder), expected)


def wait_for_log(folder: Path, expected: dict, process: subprocess.Popen, err, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if {entry["file"] for entry in read_log(folder)} >= set(expected):
            return
        if process.poll() is not None:
            err.seek(0)
            raise AssertionError(f"the monitor stopped: {err.read()[-3000:]}")
        time.sleep(0.1)
    missing = set(expected) - {entry["file"] for entry in read_log(folder)}
    raise AssertionError(f"not logged within {seconds} s: {sorted(missing)}")


@pytest.mark.parametrize("how", ["sigterm", "sigint-inherited-ignored"])
def test_the_watch_stops_cleanly_on_sigterm_and_on_ctrl_c_even_when_started_with_sigint_ignored(model_dir, tmp_path,
                                                                                               how):
    """A service manager stops it with SIGTERM; a shell that starts it in the background hands it SIGINT ignored
    (Python then installs no KeyboardInterrupt handler): both must end the watch with "stopped", exit 0."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if how != "sigterm" else None
    with (tmp_path / "stdout").open("w+") as out:
        process = subprocess.Popen(command(folder, model_dir), stdout=out, stderr=subprocess.DEVNULL,
                                   env=environment(tmp_path), preexec_fn=ignore_sigint)
        try:
            deadline = time.monotonic() + 120
            while "watching " not in (tmp_path / "stdout").read_text():
                assert process.poll() is None and time.monotonic() < deadline, "the monitor did not start"
                time.sleep(0.05)
        finally:
            os.kill(process.pid, signal.SIGTERM if how == "sigterm" else signal.SIGINT)
            code = process.wait(timeout=60)
    assert code == 0 and (tmp_path / "stdout").read_text().splitlines()[-1] == "stopped"


def test_the_heatmap_folder_is_made_or_refused_and_written_through_its_open_descriptor(tmp_path):
    from vapm.serving.monitor import MonitorError, open_heatmap_folder

    made = tmp_path / "alerts" / "heatmaps"
    fd = open_heatmap_folder(made)
    try:
        assert made.is_dir()
        # a link planted under the folder's name after it was opened changes nothing: pictures go where it was
        made.rename(tmp_path / "moved")
        (tmp_path / "target").mkdir()
        made.symlink_to(tmp_path / "target")
        os.close(os.open("picture.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        assert (tmp_path / "moved" / "picture.png").is_file() and not (tmp_path / "target" / "picture.png").exists()
    finally:
        os.close(fd)
    with pytest.raises(MonitorError, match="is a symbolic link: refusing to write there"):
        open_heatmap_folder(made)
    (tmp_path / "a file").write_text("x")
    with pytest.raises(MonitorError, match="is a regular file: refusing"):
        open_heatmap_folder(tmp_path / "a file")
