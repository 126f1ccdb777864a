"""Write PyTorch checkpoint files without PyTorch, for the reader's tests.

The pickles are emitted opcode by opcode, in the layout `torch.save` produces (protocol 2, a
`collections.OrderedDict` of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
OrderedDict())` calls, storages as persistent ids); compare `pickletools.dis` of the packaged
EfficientNet-Lite0 file, which torch wrote in the legacy format.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    np.dtype("float64"): "DoubleStorage", np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage", np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage",
}


@dataclass(frozen=True)
class Tensor:
    """A strided view of a storage, as torch pickles a tensor."""
    storage: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def contiguous(arrays: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    """Each array in its own storage, row-major, as a freshly built module's parameters are."""
    tensors, storages = {}, {}
    for i, (name, array) in enumerate(arrays.items()):
        array = np.asarray(array)
        array = np.array(array, order="C")  # not ascontiguousarray, which turns 0-d into 1-d
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = Tensor(str(1000 + i), 0, array.shape, strides)
        storages[str(1000 + i)] = array.reshape(-1)
    return tensors, storages


def _int(value: int) -> bytes:
    if 0 <= value < 1 << 8:
        return b"K" + bytes([value])
    if 0 <= value < 1 << 16:
        return b"M" + struct.pack("<H", value)
    if -(1 << 31) <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def state_dict_pickle(tensors: dict[str, Tensor], storages: dict[str, np.ndarray], legacy: bool,
                      storage_types: dict[str, str] | None = None, extra_items: bytes = b"") -> bytes:
    """The object pickle of a state dict; `extra_items` are raw (key, value) opcodes added at its end."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R("]
    for name, tensor in tensors.items():
        storage = storages[tensor.storage]
        type_name = (storage_types or {}).get(tensor.storage, STORAGE_NAMES.get(storage.dtype))
        pid = [_str("storage"), _global("torch", type_name), _str(tensor.storage), _str("cpu"), _int(storage.size)]
        if legacy:
            pid.append(b"N")  # no storage view
        out += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(", _tuple(pid), b"Q",
                _int(tensor.offset), _tuple([_int(n) for n in tensor.shape]),
                _tuple([_int(s) for s in tensor.strides]), b"\x89",
                _global("collections", "OrderedDict"), b")R", b"tR"]
    out += [extra_items, b"u."]
    return b"".join(out)


def legacy_bytes(tensors: dict[str, Tensor], storages: dict[str, np.ndarray], object_pickle: bytes | None = None,
                 **kwargs) -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False): five pickles, then the storages (little-endian)."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [pickle.dumps(MAGIC_NUMBER, protocol=2), pickle.dumps(1001, protocol=2), pickle.dumps(sys_info, protocol=2),
             object_pickle if object_pickle is not None else state_dict_pickle(tensors, storages, legacy=True, **kwargs),
             pickle.dumps(list(storages), protocol=2)]
    for storage in storages.values():
        parts.append(struct.pack("<q", storage.size))
        parts.append(storage.astype(storage.dtype.newbyteorder("<")).tobytes())
    return b"".join(parts)


def zip_bytes(tensors: dict[str, Tensor], storages: dict[str, np.ndarray], byteorder: str = "little",
              object_pickle: bytes | None = None, **kwargs) -> bytes:
    """torch.save's zip format: archive/data.pkl, archive/byteorder, archive/data/<key>, stored uncompressed."""
    buffer = io.BytesIO()
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", object_pickle if object_pickle is not None
                         else state_dict_pickle(tensors, storages, legacy=False, **kwargs))
        archive.writestr("archive/byteorder", byteorder)
        for key, storage in storages.items():
            archive.writestr(f"archive/data/{key}", storage.astype(storage.dtype.newbyteorder(order)).tobytes())
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
