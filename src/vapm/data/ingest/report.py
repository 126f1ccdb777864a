"""An archive's ingest report, as metrics/ingest_report.json holds it per dataset: members seen, kept (per
class and split), ignored and bad (with reasons, names made printable), byte-identical duplicates, status.

The report is tracked by git, so its size is bounded whatever the archive holds: each list (ignored, bad,
duplicates) keeps its first `examples` entries in sorted order, beside the whole count and the count per reason
(the `examples` most frequent reasons, the rest summed under "other reasons")."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vapm.data.ingest.archive import clean_reason, display_name

LISTED_IN_MESSAGES = 20
DEFAULT_EXAMPLES = 20
OTHER_REASONS = "other reasons"


@dataclass
class IngestReport:
    archive: str
    kind: str
    members_seen: int = 0
    ignored: list[dict[str, str]] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    split_source: str | None = None
    classes: list[str] = field(default_factory=list)  # in label order: given, or found (auto)
    kept: dict[str, Any] = field(default_factory=dict)
    decoded: dict[str, dict[str, int]] = field(default_factory=dict)  # sizes or sample rates seen
    examples: int = DEFAULT_EXAMPLES  # entries listed per list (ingest.report_examples)

    def add_bad(self, member_name: str, reason: str) -> None:
        """Record a bad file; names and reasons are made printable and reproducible here, once for all."""
        self.bad.append({"file": display_name(member_name), "reason": clean_reason(reason)})

    def add_ignored(self, member_name: str, reason: str) -> None:
        self.ignored.append({"file": display_name(member_name), "reason": reason})

    def add_duplicate(self, member_name: str, first_name: str) -> None:
        self.duplicates.append({"file": display_name(member_name), "duplicate_of": display_name(first_name)})

    def as_dict(self, error: str | None = None) -> dict[str, Any]:
        report: dict[str, Any] = {"archive": self.archive, "kind": self.kind, "members_seen": self.members_seen}
        for name, entries, reason_key in (("ignored", self.ignored, "reason"), ("bad", self.bad, "reason"),
                                          ("duplicates", self.duplicates, None)):
            report[name] = sorted(entries, key=lambda entry: tuple(entry.values()))[:self.examples]
            report[f"{name}_count"] = len(entries)
            if reason_key:
                report[f"{name}_reasons"] = reason_counts(entries, self.examples)
        report.update({"classes": self.classes, "split_source": self.split_source, "kept": self.kept, "decoded": self.decoded,
                       "status": "failed" if error else "ok"})
        if error:
            report["error"] = error
        return report


def reason_counts(entries: list[dict[str, str]], most: int) -> dict[str, int]:
    """How many entries give each reason: the `most` most frequent reasons, the rest summed."""
    counts = Counter(entry["reason"] for entry in entries).most_common()
    counts.sort(key=lambda item: (-item[1], item[0]))
    shown = dict(counts[:most])
    rest = sum(count for _, count in counts[most:])
    if rest:
        shown[OTHER_REASONS] = rest
    return shown


def bad_files_message(bad: list[dict[str, str]]) -> str:
    entries = sorted(bad, key=lambda entry: entry["file"])
    lines = [f"  {entry['file']}: {entry['reason']}" for entry in entries[:LISTED_IN_MESSAGES]]
    if len(entries) > LISTED_IN_MESSAGES:
        lines.append(f"  ... and {len(entries) - LISTED_IN_MESSAGES} more (the ingest report counts them by reason)")
    return (f"{len(entries)} bad file(s); set ingest.on_bad_file: skip to leave them out\n" + "\n".join(lines))
