"""What one scored file becomes in the monitor: each model's answer summarised (is it an alert?) and the line
printed for it; the alert log, refused when it is a link or anything but a regular file."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from vapm.core.errors import VapmError
from vapm.serving.untrusted_files import CLOEXEC, NOFOLLOW, NONBLOCK, kind_of, shown


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", list: "a list", str: "a string", int: "a number", float: "a number",
            dict: "an object"}.get(type(value), type(value).__name__)


def summarise(result: dict[str, Any], normal_classes: set[str]) -> dict[str, Any]:
    """One model's answer for the alert log (schema: docs/alert.schema.json)."""
    summary = {"model": result["model"], "version": result.get("version")}
    if "status" in result:  # a detector
        summary.update(status=result["status"], score=result["score"], threshold=result["threshold"],
                       alert=result["status"] == "abnormal")
        if result.get("heatmap"):
            summary["heatmap"] = result["heatmap"]
    else:
        summary.update(**{"class": result["class"], "probability": result.get("probability")},
                       alert=bool(normal_classes) and result["class"] not in normal_classes)
        if "unfamiliar" in result:  # an unfamiliar input is an alert whatever class it is given
            summary.update(unfamiliar=result["unfamiliar"], unfamiliar_reasons=result["unfamiliar_reasons"],
                           alert=summary["alert"] or result["unfamiliar"])
    return summary


def describe(summary: dict[str, Any]) -> str:
    if "status" in summary:
        said = f"{summary['model']} says {summary['status']} (score {summary['score']:.3g} > {summary['threshold']:.3g})"
        return said + (f", heatmap {summary['heatmap']}" if summary.get("heatmap") else "")
    probability = f" ({summary['probability']:.1%})" if summary.get("probability") is not None else ""
    if summary.get("unfamiliar"):
        return (f"{summary['model']}: unfamiliar input ({'; '.join(summary['unfamiliar_reasons'])}), it would say "
                f"{summary['class']}{probability}")
    return f"{summary['model']} says {summary['class']}{probability}"


class MonitorError(VapmError, ValueError):
    """The monitor cannot start as asked (no such folder, no model, ...) or cannot write its alert log."""


def check_alert_log(alert_log: Path) -> None:
    """Refuse to start on an alert log that is a link, a pipe or anything but a regular file."""
    try:
        mode = os.lstat(alert_log).st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise MonitorError(f"cannot use the alert log {shown(str(alert_log))}: {err.strerror}") from None
    if stat.S_ISLNK(mode):
        raise MonitorError(f"the alert log {shown(str(alert_log))} is a symbolic link: refusing to write "
                           f"through it; remove it, or give --alerts a file")
    if not stat.S_ISREG(mode):
        raise MonitorError(f"the alert log {shown(str(alert_log))} is {kind_of(mode)}: "
                           f"remove it, or give --alerts a file")

def open_alert_log(alert_log: Path) -> int:
    """The alert log opened for appending, refusing links (O_NOFOLLOW) and never blocking on a pipe."""
    try:
        fd = os.open(alert_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW | NONBLOCK | CLOEXEC,
                     0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            check_alert_log(alert_log)  # names what is there instead
        raise MonitorError(f"cannot write the alert log {shown(str(alert_log))}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        check_alert_log(alert_log)
        raise MonitorError(f"the alert log {shown(str(alert_log))} is not a regular file")
    return fd
