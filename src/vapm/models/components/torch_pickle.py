"""Read PyTorch checkpoints (state dicts) into NumPy arrays, without PyTorch and without trusting the file.

A `.pth` file is a pickle, and unpickling calls whatever the pickle names: `torch.load` on a hostile
file runs its code. This reader resolves only the few globals a state dict needs to rebuild its
tensors (`_ALLOWED_GLOBALS`) and refuses every other one before anything is called; even the allowed
ones resolve to functions and markers of this module, so no PyTorch code is needed or imported.

Both of PyTorch's serialisation formats are read:

- legacy (`torch.save` before 1.6, or `_use_new_zipfile_serialization=False`): five pickles in a row
  (magic number, protocol version, system info, the object, the list of storage keys), then each
  storage in that order as a little-endian int64 element count and the raw elements. PyTorch's reader
  (`THPStorage_readFileRaw`) always decodes these as little-endian, whatever the saving machine was.
- zip (the default since 1.6): `<name>/data.pkl` holds the object, `<name>/data/<key>` each storage's
  raw bytes, in the byte order named by `<name>/byteorder` (little when that record is absent).

Only a flat state dict (a mapping of names to tensors, as `module.state_dict()` returns) is accepted;
each tensor comes back as a C-contiguous array in native byte order (bfloat16 widened to float32).
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vapm.core.errors import VapmError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL_VERSION = 1001                # torch.serialization.PROTOCOL_VERSION
MAX_TENSOR_DIMS = 32                          # NumPy's historical limit on array dimensions
# Tensors may share a storage (tied weights), so the arrays can outgrow the stored data, but a small file
# must not expand into gigabytes through many tensors viewing one storage.
MAX_EXPANSION = 4


class TorchCheckpointError(VapmError, ValueError):
    """A PyTorch checkpoint cannot be read: missing, truncated, corrupt, or not a plain state dict."""
    advice = "reinstall or download the file again, or re-save it as a plain state dict"


class ForbiddenPickleGlobal(TorchCheckpointError):
    """The file's pickle asks for a global outside the allow-list: it may be malicious, and nothing ran."""
    advice = "do not load this file; get the checkpoint again from a source you trust"


@dataclass(frozen=True)
class _StorageType:
    """Stands for `torch.<name>` (e.g. FloatStorage): the element type of a storage, nothing callable."""
    name: str
    dtype: np.dtype      # little-endian element type as stored (bfloat16 as its uint16 bits)
    bfloat16: bool = False


_STORAGE_TYPES = {
    name: _StorageType(name, np.dtype(code), name == "BFloat16Storage")
    for name, code in {
        "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
        "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
        "ByteStorage": "u1", "BoolStorage": "?",
    }.items()
}


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by the pickle; its bytes are read after unpickling (legacy files store them last)."""
    key: str
    storage_type: _StorageType
    numel: int             # elements in the whole stored storage
    view_offset: int = 0   # legacy storage views: first element of the view within the storage
    view_numel: int | None = None

    @property
    def visible_numel(self) -> int:
        return self.numel if self.view_numel is None else self.view_numel


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as `_rebuild_tensor_v2` describes it: a strided window onto a storage."""
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > MAX_TENSOR_DIMS or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise TorchCheckpointError(f"a tensor's {what} is {value!r}, not a tuple of at most "
                                   f"{MAX_TENSOR_DIMS} non-negative integers")
    return value


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> _TensorRef:
    """Our stand-in for `torch._utils._rebuild_tensor_v2`: checks the geometry, reads nothing yet."""
    if not isinstance(storage, _StorageRef):
        raise TorchCheckpointError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise TorchCheckpointError(f"a tensor's storage offset is {storage_offset!r}, not a non-negative integer")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise TorchCheckpointError(f"a tensor has size {shape} but strides {strides}")
    if math.prod(shape):
        last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.visible_numel:
            raise TorchCheckpointError(
                f"a tensor of size {shape}, strides {strides} at offset {storage_offset} reaches element "
                f"{last} of a storage of {storage.visible_numel}")
    # requires_grad, backward_hooks and metadata concern autograd only; hooks would need refused globals.
    return _TensorRef(storage, storage_offset, shape, strides)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS` and storage persistent ids; collects the storages it meets."""

    def __init__(self, stream: io.BytesIO, storages: dict[str, _StorageRef]) -> None:
        super().__init__(stream, encoding="utf-8")  # as torch.load: Python 2 strings decode as UTF-8
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:  # GLOBAL, STACK_GLOBAL, INST, OBJ and EXT opcodes
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenPickleGlobal(
                f"the pickle asks for {module}.{name}, which a PyTorch state dict never needs, so it was "
                "refused and nothing was run (the file may be malicious)") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise ForbiddenPickleGlobal(f"the pickle refers to a persistent {kind!r} object; only tensor "
                                        "storages are accepted (a whole pickled model is not a state dict)")
        if len(pid) not in (5, 6):
            raise TorchCheckpointError(f"a storage reference has {len(pid)} fields, expected 5 (zip) or 6 (legacy)")
        storage_type, key, location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchCheckpointError(f"a storage has type {storage_type!r}, not a torch storage type")
        if not isinstance(key, str) or not isinstance(location, str):
            raise TorchCheckpointError(f"a storage reference has key {key!r} and location {location!r}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise TorchCheckpointError(f"storage {key} has {numel!r} elements")
        root = self._storages.setdefault(key, _StorageRef(key, storage_type, numel))
        if (root.storage_type, root.numel) != (storage_type, numel):
            raise TorchCheckpointError(f"storage {key} is declared twice, differently")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        # Legacy storage views: (view key, offset, size) within the root storage.
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])
                and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= numel):
            raise TorchCheckpointError(f"storage {key} has an invalid view {view!r}")
        return _StorageRef(key, storage_type, numel, view_offset=view[1], view_numel=view[2])


# Anything a damaged pickle can make the C unpickler raise (besides our own errors).
_PICKLE_FAILURES = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                    AttributeError, struct.error, OverflowError, RecursionError, UnicodeDecodeError,
                    MemoryError)


# The extension-registry opcodes push objects from copyreg's process-wide cache without asking find_class
# when another unpickler has looked the code up before; a state dict never uses them.
_EXTENSION_OPCODES = {"EXT1", "EXT2", "EXT4"}


def _refuse_extension_codes(stream: io.BytesIO) -> None:
    start = stream.tell()
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in _EXTENSION_OPCODES:
            raise ForbiddenPickleGlobal(f"the pickle asks for copyreg extension code {arg}, which a PyTorch state "
                                        "dict never needs, so it was refused and nothing was run")
    stream.seek(start)


def _unpickle(stream: io.BytesIO, storages: dict[str, _StorageRef], what: str) -> Any:
    try:
        _refuse_extension_codes(stream)
        return _RestrictedUnpickler(stream, storages).load()
    except TorchCheckpointError:
        raise
    except _PICKLE_FAILURES as err:
        raise TorchCheckpointError(f"its {what} pickle is damaged or truncated ({type(err).__name__}: {err})") from err


def _decode_storage(raw: bytes | memoryview, ref: _StorageRef, byteorder: str) -> np.ndarray:
    """A storage's elements as a 1-D native-order array (bfloat16 widened to float32)."""
    dtype = ref.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
    flat = np.frombuffer(raw, dtype=dtype, count=ref.numel)
    if ref.storage_type.bfloat16:  # the top 16 bits of a float32
        return (flat.astype(np.uint32) << 16).view(np.float32)
    return flat.astype(dtype.newbyteorder("="), copy=False)


def _tensor_array(tensor: _TensorRef, flat: np.ndarray) -> np.ndarray:
    if not math.prod(tensor.shape):
        return np.zeros(tensor.shape, dtype=flat.dtype)
    start = tensor.storage.view_offset + tensor.offset  # _rebuild_tensor_v2 checked the far end is inside
    window = np.lib.stride_tricks.as_strided(
        flat[start:], shape=tensor.shape, strides=[s * flat.itemsize for s in tensor.strides], writeable=False)
    return np.array(window, order="C", copy=True)


def _state_dict(obj: Any, flats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise TorchCheckpointError(f"it holds a {type(obj).__name__}, not a state dict (a mapping of names to "
                                   "tensors); save module.state_dict() instead")
    budget = MAX_EXPANSION * sum(flat.nbytes for flat in flats.values()) + (1 << 20)
    arrays: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise TorchCheckpointError(f"entry {name!r} holds {type(value).__name__}, not a tensor: only flat "
                                       "state dicts (names to tensors) are supported")
        budget -= math.prod(value.shape) * flats[value.storage.key].itemsize
        if budget < 0:
            raise TorchCheckpointError(f"its tensors would need more than {MAX_EXPANSION} times the stored data "
                                       "(many tensors viewing the same storage)")
        arrays[name] = _tensor_array(value, flats[value.storage.key])
    return arrays


def _read_legacy(data: bytes) -> dict[str, np.ndarray]:
    stream = io.BytesIO(data)
    storages: dict[str, _StorageRef] = {}
    magic = _unpickle(stream, storages, "magic-number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError("it is neither a zip nor a legacy PyTorch checkpoint (wrong magic number)")
    protocol = _unpickle(stream, storages, "protocol-version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(f"it uses legacy protocol version {protocol!r}, not {LEGACY_PROTOCOL_VERSION}")
    if not isinstance(_unpickle(stream, storages, "system-info"), dict):
        raise TorchCheckpointError("its system-info pickle is not a dict")
    obj = _unpickle(stream, storages, "object")
    keys = _unpickle(stream, storages, "storage-keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise TorchCheckpointError("its storage-key list is not a list of distinct names")
    if set(keys) != set(storages):
        missing, extra = sorted(set(storages) - set(keys)), sorted(set(keys) - set(storages))
        raise TorchCheckpointError(f"its storage list does not match its tensors (missing {missing[:3]}, "
                                   f"unused {extra[:3]})")
    view = memoryview(data)
    position = stream.tell()
    flats: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages[key]
        if position + 8 > len(data):
            raise TorchCheckpointError(f"it is truncated: storage {key} is missing")
        (numel,) = struct.unpack_from("<q", data, position)
        if numel != ref.numel:
            raise TorchCheckpointError(f"storage {key} holds {numel} elements where the pickle says {ref.numel}")
        end = position + 8 + numel * ref.storage_type.dtype.itemsize
        if end > len(data):
            raise TorchCheckpointError(f"it is truncated: storage {key} needs bytes up to {end}, "
                                       f"the file has {len(data)}")
        flats[key] = _decode_storage(view[position + 8:end], ref, "little")
        position = end
    return _state_dict(obj, flats)


def _read_zip(data: bytes) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [name for name in archive.namelist() if name == "data.pkl" or name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise TorchCheckpointError(f"it is a zip with {len(pickles)} data.pkl records, not a PyTorch "
                                           "checkpoint (which has exactly one)")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = "little"
            if prefix + "byteorder" in archive.namelist():
                byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise TorchCheckpointError(f"its byteorder record says {byteorder!r}, not little or big")
            storages: dict[str, _StorageRef] = {}
            obj = _unpickle(io.BytesIO(archive.read(pickles[0])), storages, "data.pkl")
            flats: dict[str, np.ndarray] = {}
            for key, ref in storages.items():
                record = f"{prefix}data/{key}"
                try:
                    info = archive.getinfo(record)
                except KeyError:
                    raise TorchCheckpointError(f"record {record} (a tensor's storage) is missing") from None
                expected = ref.numel * ref.storage_type.dtype.itemsize
                # torch.save stores records uncompressed, so their size is bounded by the file's.
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != expected:
                    raise TorchCheckpointError(f"record {record} has {info.file_size} bytes "
                                               f"(compression {info.compress_type}), expected {expected} stored")
                flats[key] = _decode_storage(archive.read(record), ref, byteorder)
    except zipfile.BadZipFile as err:
        raise TorchCheckpointError(f"it is a damaged zip ({err})") from err
    return _state_dict(obj, flats)


def _is_tar(data: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:"):
            return True
    except tarfile.TarError:
        return False


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state-dict file, by name, in file order, as NumPy arrays.

    Raises ForbiddenPickleGlobal when the pickle names anything but tensor-rebuilding globals (nothing
    is executed), and TorchCheckpointError (one line naming the file) for every other problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TorchCheckpointError(f"{path}: cannot read the PyTorch checkpoint ({err.strerror or err})") from err
    try:
        if data[:4] == b"PK\x03\x04" and zipfile.is_zipfile(io.BytesIO(data)):
            return _read_zip(data)
        if _is_tar(data):
            raise TorchCheckpointError("it is in PyTorch's pre-0.4 tar format, which is not supported; "
                                       "re-save it with a current torch.save")
        return _read_legacy(data)
    except TorchCheckpointError as err:
        raise type(err)(f"{path}: {err}; {err.advice}") from err.__cause__
