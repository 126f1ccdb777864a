"""The torch-free, restricted reader of PyTorch checkpoints: real file, both formats, hostile and broken files."""
from __future__ import annotations

import copyreg
import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

from tests.models.torch_checkpoints import Tensor, contiguous, legacy_bytes, state_dict_pickle, write, zip_bytes
from vapm.core.errors import VapmError
from vapm.models.components.efficientnet_lite import packaged_weights
from vapm.models.components.torch_pickle import ForbiddenPickleGlobal, TorchCheckpointError, read_state_dict

FORMATS = {"legacy": legacy_bytes, "zip": zip_bytes}


@pytest.fixture(scope="module")
def packaged_file() -> Path:
    return packaged_weights().path


def _mixed_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn.running_var": rng.random(4) + 0.5,                     # float64
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),     # a 0-d tensor
        "half": rng.standard_normal(5).astype(np.float16),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(250, 256, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


# --------------------------------------------------------------------------- the real file

def test_packaged_file_is_the_legacy_format_and_needs_only_tensor_globals(packaged_file):
    data = packaged_file.read_bytes()
    assert not data.startswith(b"PK")  # not the zip format
    # The five legacy pickles; the reader's allow-list covers exactly what the object pickle names.
    stream, names = io.BytesIO(data), set()
    for _ in range(5):
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name in ("GLOBAL", "STACK_GLOBAL", "INST"):
                names.add(arg)
    assert names == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
                     "torch LongStorage"}


def test_packaged_efficientnet_lite0_state_dict_decodes_to_sensible_tensors(packaged_file):
    state = read_state_dict(packaged_file)
    assert len(state) == 296
    assert list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"]  # file order kept
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    for name, array in state.items():
        assert array.flags.c_contiguous and array.dtype.isnative
        assert array.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float32)
        assert np.isfinite(array).all()
    # Decoded with a wrong byte order or offset these would be garbage: BatchNorm variances are >= 0, and
    # the few that are exactly 0 belong to channels whose producing filter training drove to ~0 (dead).
    variances = np.concatenate([a for n, a in state.items() if n.endswith("running_var")])
    assert variances.min() >= 0 and variances.max() < 1e4 and np.mean(variances == 0) < 0.01
    producers = {"_bn0": "_conv_stem"} | {f"_blocks.{i}._bn0": f"_blocks.{i}._expand_conv" for i in range(1, 16)}
    for norm, conv in producers.items():
        dead = state[f"{norm}.running_var"] == 0
        filters = np.abs(state[f"{conv}.weight"]).reshape(len(dead), -1).max(axis=1)
        assert (filters[dead] < 1e-5).all() and (filters[~dead] > 0).all(), norm
    assert sum(a.size for n, a in state.items() if not n.endswith("num_batches_tracked")) == 4_694_024


def test_truncated_or_corrupt_real_file_gives_one_clear_line(packaged_file, tmp_path):
    data = packaged_file.read_bytes()
    cases = {
        "in_object_pickle": data[:30_000],
        "in_storage_keys": data[:44_000],
        "in_storage_data": data[: len(data) - 100],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
    }
    for label, content in cases.items():
        path = write(tmp_path / f"{label}.pth", content)
        with pytest.raises(TorchCheckpointError) as caught:
            read_state_dict(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, label
        assert isinstance(caught.value, VapmError)
    with pytest.raises(TorchCheckpointError, match="truncated"):
        read_state_dict(tmp_path / "in_storage_data.pth")
    with pytest.raises(TorchCheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "absent.pth")


# --------------------------------------------------------------------------- both formats

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_of_dtypes_scalars_and_empty_tensors(fmt, tmp_path):
    arrays = _mixed_arrays()
    path = write(tmp_path / "state.pth", FORMATS[fmt](*contiguous(arrays)))
    state = read_state_dict(path)
    assert list(state) == list(arrays)
    for name, expected in arrays.items():
        assert state[name].dtype == expected.dtype and state[name].shape == expected.shape, name
        np.testing.assert_array_equal(state[name], expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strides_offsets_and_shared_storages_follow_torch_semantics(fmt, tmp_path):
    base = np.arange(24, dtype=np.float32)
    tensors = {
        "matrix": Tensor("s", 0, (4, 6), (6, 1)),
        "transposed": Tensor("s", 0, (6, 4), (1, 6)),     # matrix.T, not contiguous
        "window": Tensor("s", 7, (2, 3), (6, 2)),          # offset and a step
        "broadcast_row": Tensor("s", 5, (3, 4), (0, 1)),   # expand(): stride 0
    }
    state = read_state_dict(write(tmp_path / "views.pth", FORMATS[fmt](tensors, {"s": base})))
    matrix = base.reshape(4, 6)
    np.testing.assert_array_equal(state["matrix"], matrix)
    np.testing.assert_array_equal(state["transposed"], matrix.T)
    np.testing.assert_array_equal(state["window"], base[7:].reshape(-1)[[0, 2, 4, 6, 8, 10]].reshape(2, 3))
    np.testing.assert_array_equal(state["broadcast_row"], np.tile(base[5:9], (3, 1)))
    assert all(a.flags.c_contiguous and a.flags.owndata for a in state.values())
    state["matrix"][0, 0] = -1  # copies: no array aliases another
    assert state["transposed"][0, 0] == 0


def test_zip_big_endian_and_bfloat16(tmp_path):
    arrays = {"w": np.linspace(-2, 2, 7).astype(np.float64), "n": np.array([1, -2, 3], dtype=np.int32)}
    state = read_state_dict(write(tmp_path / "be.pth", zip_bytes(*contiguous(arrays), byteorder="big")))
    np.testing.assert_array_equal(state["w"], arrays["w"])
    np.testing.assert_array_equal(state["n"], arrays["n"])
    assert state["w"].dtype.isnative
    # bfloat16 is the top half of a float32: 1.5 and -2.0 are exact in it.
    bits = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    tensors = {"b": Tensor("k", 0, (2,), (1,))}
    path = write(tmp_path / "bf16.pth", zip_bytes(tensors, {"k": bits}, storage_types={"k": "BFloat16Storage"}))
    np.testing.assert_array_equal(read_state_dict(path)["b"], np.array([1.5, -2.0], dtype=np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_geometry_outside_the_storage_is_refused(fmt, tmp_path):
    storage = {"s": np.arange(10, dtype=np.float32)}
    for tensor in (Tensor("s", 0, (11,), (1,)), Tensor("s", 8, (2, 2), (1, 1)), Tensor("s", 0, (3, 4), (4, 1))):
        path = write(tmp_path / "bad.pth", FORMATS[fmt]({"t": tensor}, storage))
        with pytest.raises(TorchCheckpointError, match="reaches element"):
            read_state_dict(path)


def test_zip_with_missing_resized_or_damaged_storage_record(tmp_path):
    data = zip_bytes(*contiguous({"w": np.arange(6, dtype=np.float32)}))
    missing = data.replace(b"archive/data/1000", b"archive/data/9999")
    with pytest.raises(TorchCheckpointError, match="missing"):
        read_state_dict(write(tmp_path / "missing.pth", missing))
    tensors, storages = contiguous({"w": np.arange(6, dtype=np.float32)})
    wrong_size = zip_bytes(tensors, {"1000": np.arange(5, dtype=np.float32)},
                           object_pickle=state_dict_pickle(tensors, storages, legacy=False))
    with pytest.raises(TorchCheckpointError, match="expected 24 stored"):
        read_state_dict(write(tmp_path / "size.pth", wrong_size))
    stored = np.arange(6, dtype=np.float32).tobytes()
    damaged = data.replace(stored, stored[:-1] + b"\x7f")  # the CRC no longer matches
    with pytest.raises(TorchCheckpointError, match="damaged zip"):
        read_state_dict(write(tmp_path / "crc.pth", damaged))


def test_a_pickle_that_is_not_a_flat_state_dict_is_refused(tmp_path):
    not_a_dict = pickle.dumps([1, 2, 3], protocol=2)
    with pytest.raises(TorchCheckpointError, match="holds a list, not a state dict"):
        read_state_dict(write(tmp_path / "list.pth", legacy_bytes({}, {}, object_pickle=not_a_dict)))
    nested = pickle.dumps({"epoch": 3}, protocol=2)
    with pytest.raises(TorchCheckpointError, match="'epoch' holds int, not a tensor"):
        read_state_dict(write(tmp_path / "nested.pth", zip_bytes({}, {}, object_pickle=nested)))


# --------------------------------------------------------------------------- hostile files

class _RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _OpensFile:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_positive_control_the_payload_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "created_by_plain_pickle"
    pickle.loads(pickle.dumps(_OpensFile(marker), protocol=2)).close()
    assert marker.exists()  # so the refusals below are refusals of a live payload


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_malicious_reduce_is_refused_without_running_anything(protocol, tmp_path):
    marker = tmp_path / "pwned"
    payloads = {"system": _RunsShellCommand(f"touch {marker}"), "open": _OpensFile(marker)}
    for label, payload in payloads.items():
        evil = pickle.dumps(payload, protocol=protocol)
        module = (os.system if label == "system" else open).__module__
        name = "system" if label == "system" else "open"
        files = {"bare": evil, "legacy": legacy_bytes({}, {}, object_pickle=evil),
                 "zip": zip_bytes({}, {}, object_pickle=evil)}
        for kind, content in files.items():
            path = write(tmp_path / f"{label}_{kind}.pth", content)
            with pytest.raises(ForbiddenPickleGlobal, match=rf"asks for {module}\.{name}, .*nothing was run"):
                read_state_dict(path)
            assert not marker.exists(), (label, kind, protocol)


def test_hand_written_globals_inst_and_persistent_ids_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    eval_call = (b"\x80\x02cbuiltins\neval\nX" + len(f"open('{marker}', 'w')").to_bytes(4, "little")
                 + f"open('{marker}', 'w')".encode() + b"\x85R.")
    inst = f"(S'touch {marker}'\nios\nsystem\n.".encode()  # the INST opcode, protocol 0
    module_pid = b"\x80\x02(X\x06\x00\x00\x00moduleX\x01\x00\x00\x00xtQ."
    for label, content, refused in (("eval", eval_call, "builtins.eval"), ("inst", inst, "os.system"),
                                    ("pid", module_pid, "persistent 'module' object")):
        with pytest.raises(ForbiddenPickleGlobal, match=refused):
            read_state_dict(write(tmp_path / f"{label}.pth", legacy_bytes({}, {}, object_pickle=content)))
        assert not marker.exists(), label


def test_extension_codes_are_refused_even_when_copyreg_has_them_cached(tmp_path):
    code = 241  # copyreg's private-use range
    copyreg.add_extension("os", "system", code)
    try:
        pushes_os_system = b"\x80\x02\x82" + bytes([code]) + b"."
        assert pickle.loads(pushes_os_system) is os.system  # now in the process-wide cache
        path = write(tmp_path / "ext.pth", legacy_bytes({}, {}, object_pickle=pushes_os_system))
        with pytest.raises(ForbiddenPickleGlobal, match=f"copyreg extension code {code}"):
            read_state_dict(path)
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_forbidden_global_after_valid_tensors_is_still_refused(fmt, tmp_path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    extra = b"X\x04\x00\x00\x00evilcposix\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R"
    tensors, storages = contiguous({"w": np.ones(3, dtype=np.float32)})
    path = write(tmp_path / "mixed.pth", FORMATS[fmt](tensors, storages, extra_items=extra))
    with pytest.raises(ForbiddenPickleGlobal, match=r"posix\.system"):
        read_state_dict(path)
    assert not marker.exists()
