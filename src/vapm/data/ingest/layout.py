"""How an archive is laid out: which members are data, which class each belongs to, which are defect masks.

Three ways to name the classes (params `vision.classes` / `audio.classes`, `ingest.<kind>_pattern`):
- a class list and no pattern: the built-in layouts (a class folder anywhere in the path, or a NEU file-name
  prefix; see vapm.data.ingest.labels);
- `auto` and no pattern: the folder holding each file (a train/test/valid folder is skipped) is its class;
- a pattern: a regular expression searched in each member path, whose named group `class` is the class; members
  it does not match are ignored. With a list, the group's value must name one of the listed classes.
With `auto`, the classes are the distinct names found, sorted (case-insensitively distinct: the first spelling in
sorted member order is kept).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from vapm.data.ingest.archive import path_parts
from vapm.data.ingest.labels import ALL_SPLIT_FOLDERS, UnknownClass, class_aliases, class_from_path


@dataclass(frozen=True)
class Layout:
    """The rules of one archive: `classes` None means auto; `key` names the params in messages (vision/audio)."""
    classes: list[str] | None
    pattern: str | None = None
    mask_pattern: str | None = None
    key: str = "vision"

    @property
    def pattern_key(self) -> str:
        return f"ingest.{self.key}_pattern"

    @property
    def classes_key(self) -> str:
        return f"{self.key}.classes"

    def raw_class(self, member_name: str) -> str | None:
        """The class name as the path spells it, or None when the pattern does not match (not data).

        Raises UnknownClass when the path names no class the rules accept."""
        if self.pattern is not None:
            match = re.search(self.pattern, member_name)
            if match is None:
                return None
            name = match.group("class")
            if not name:
                raise UnknownClass(f"{self.pattern_key} matches but its group `class` is empty")
            return name
        if self.classes is None:
            return folder_class(member_name, self.pattern_key)
        return class_from_path(member_name, self.classes)

    def mask_key(self, member_name: str) -> tuple[str, str] | None:
        """(class as spelt, image stem) when the member is a defect mask, else None."""
        if self.mask_pattern is None:
            return None
        match = re.search(self.mask_pattern, member_name)
        if match is None or not match.group("class") or not match.group("stem"):
            return None
        return match.group("class"), match.group("stem")


def folder_class(member_name: str, pattern_key: str) -> str:
    """`auto` without a pattern: the nearest folder of the path that is not a train/test/valid folder."""
    folders = [folder for folder in path_parts(member_name)[:-1] if folder.lower() not in ALL_SPLIT_FOLDERS]
    if not folders:
        raise UnknownClass("classes: auto takes each file's class from the folder holding it, but this file is in "
                           f"no class folder; give {pattern_key} (a regular expression with a group (?P<class>...))")
    return folders[-1]


class ClassNames:
    """Maps the spellings found in paths to the final class list (given, or discovered for `auto`)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._found: dict[str, str] = {}  # lower-case spelling -> first spelling seen (auto)
        self._aliases = None if layout.classes is None else class_aliases(layout.classes)

    def add(self, raw: str) -> str:
        """The class `raw` stands for (a listed class, or for auto the first spelling of it seen)."""
        if self._aliases is None:
            return self._found.setdefault(raw.lower(), raw)
        if self.layout.pattern is None:
            return raw  # class_from_path already returned a listed name
        try:
            return self._aliases[raw.lower()]
        except KeyError:
            raise UnknownClass(f"{self.layout.pattern_key} gives class {raw!r}, which is not one of "
                               f"{self.layout.classes_key} {self.layout.classes}") from None

    def lookup(self, raw: str) -> str | None:
        """The class a mask's spelling stands for, or None if no image has that class."""
        if self._aliases is None:
            return self._found.get(raw.lower())
        return self._aliases.get(raw.lower())

    def final(self) -> list[str]:
        if self.layout.classes is not None:
            return list(self.layout.classes)
        return sorted(self._found.values())


def image_stem(member_name: str) -> str:
    return PurePosixPath(path_parts(member_name)[-1]).stem
