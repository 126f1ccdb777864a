"""What a member path says: whether it is data at all, its class, and its train/test split."""
from __future__ import annotations

from pathlib import PurePosixPath

from vapm.config.settings import ParamsError
from vapm.core.errors import VapmError
from vapm.data.ingest.archive import path_parts

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
AUDIO_EXTENSIONS = (".dat", ".wav", ".flac")

SPLIT_FOLDERS = ("train", "test")
# A published train/valid/test split: its validation items join train (the models draw their own stratified
# validation slice from train by train.validation_fraction; the report counts how many came from these folders).
VALIDATION_FOLDERS = ("valid", "validation", "val")
ALL_SPLIT_FOLDERS = (*SPLIT_FOLDERS, *VALIDATION_FOLDERS)

# The names the NEU releases give each defect, keyed by the canonical class name (lower case):
# folder spellings and file-name prefixes of NEU-CLS (Cr_1.bmp) and NEU-DET (rolled-in_scale_7.jpg).
NEU_ALIASES: dict[str, tuple[str, ...]] = {
    "crazing": ("cr", "crazing"),
    "inclusion": ("in", "inclusion"),
    "patches": ("pa", "patches"),
    "pitted": ("ps", "pitted_surface", "pitted"),
    "rolled": ("rs", "rolled-in_scale", "rolled"),
    "scratches": ("sc", "scratches"),
}

_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


class UnknownClass(VapmError, ValueError):
    """The path names no class of the list, or names two different ones."""


def ignore_reason(member_name: str, data_extensions: tuple[str, ...]) -> str | None:
    """Why a member is not a data file (folders, OS clutter, licences, readmes), or None for data."""
    parts = path_parts(member_name)
    if member_name.endswith(("/", "\\")) or not parts:
        return "directory"
    if any(part == "__MACOSX" for part in parts):
        return "macOS metadata"
    name = parts[-1]
    if name.startswith(".") or name.lower() in _IGNORED_NAMES:
        return "hidden or system file"
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in data_extensions:
        return f"not a data file (expected {', '.join(data_extensions)})"
    return None


def split_from_path(member_name: str) -> str | None:
    """'train', 'test' or 'validation' when a folder of the path is named so (any case; valid, validation and
    val are 'validation'), else None."""
    folders = {part.lower() for part in path_parts(member_name)[:-1]}
    found = [split for split in SPLIT_FOLDERS if split in folders]
    if folders & set(VALIDATION_FOLDERS):
        found.append("validation")
    if len(found) > 1:
        raise UnknownClass(f"path has more than one split folder ({' and '.join(found)}): {member_name}")
    return found[0] if found else None


def class_aliases(classes: list[str]) -> dict[str, str]:
    """Lower-case spelling -> class name, for folder names and file-name prefixes."""
    aliases: dict[str, str] = {}
    for name in classes:
        for alias in (name.lower(), *NEU_ALIASES.get(name.lower(), ())):
            other = aliases.setdefault(alias, name)
            if other != name:
                raise UnknownClass(f"classes {other!r} and {name!r} share the spelling {alias!r}")
    return aliases


def check_class_names(classes: list[str], key: str) -> None:
    """One params error before any work when two classes share a spelling that paths are matched by (a folder
    name or a NEU file-name prefix, e.g. `Cr` and `Crazing`): otherwise every file would be refused alike."""
    try:
        class_aliases(classes)
    except UnknownClass as err:
        raise ParamsError(f"{key}: {err}; rename one of them (or give the folder names the archive uses)") from None


def _class_from_folders(folders: list[str], aliases: dict[str, str]) -> str | None:
    # The folder nearest the file wins, so a leading top folder never hides the class folder.
    for folder in reversed(folders):
        if folder.lower() in aliases:
            return aliases[folder.lower()]
    return None


def _class_from_prefix(file_name: str, aliases: dict[str, str]) -> tuple[str, str] | None:
    """(class, prefix) for names like 'Cr_12.bmp' or 'rolled-in_scale_7.jpg'; longest prefix wins."""
    stem = file_name.lower()
    matches = [(alias, cls) for alias, cls in aliases.items()
               if stem.startswith(alias + "_")]
    if not matches:
        return None
    alias, cls = max(matches, key=lambda match: len(match[0]))
    return cls, file_name[:len(alias) + 1]


def class_from_path(member_name: str, classes: list[str]) -> str:
    """The class a member belongs to, from its folders (any case) or its NEU file-name prefix."""
    parts = path_parts(member_name)
    folders, file_name = parts[:-1], parts[-1]
    aliases = class_aliases(classes)
    by_folder = _class_from_folders(folders, aliases)
    by_prefix = _class_from_prefix(file_name, aliases)
    if by_folder and by_prefix and by_prefix[0] != by_folder:
        raise UnknownClass(f"class folder says {by_folder} but file-name prefix {by_prefix[1]!r} "
                           f"says {by_prefix[0]}")
    if by_folder:
        return by_folder
    if by_prefix:
        return by_prefix[0]
    where = f"folder {folders[-1]!r}" if folders else "the archive root"
    raise UnknownClass(f"unknown class: neither a folder nor the file-name prefix names one of "
                       f"{classes} (file in {where})")
