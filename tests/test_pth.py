"""read_pth: torch checkpoints read without torch, and refused when they
would run code."""

from __future__ import annotations

import argparse
import builtins
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from resnext_jax.weights.pth import UnsafePickleError, read_pth

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


def _as_numpy(tensor) -> np.ndarray:
    torch = pytest.importorskip("torch")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: via the bits.
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _assert_same_array(actual, tensor):
    expected = _as_numpy(tensor)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.flags.c_contiguous and actual.flags.owndata
    # Bits, not values: NaNs and -0.0 must come through as saved.
    assert actual.tobytes() == np.ascontiguousarray(expected).tobytes()


def _assert_same_state_dict(actual, state_dict):
    assert list(actual) == list(state_dict)
    for key, tensor in state_dict.items():
        _assert_same_array(actual[key], tensor)


@pytest.fixture(params=["zip", "legacy"])
def save(request, tmp_path):
    """torch.save in one of its two formats, returning the file's path."""
    torch = pytest.importorskip("torch")
    legacy = request.param == "legacy"

    def save_(obj, name="checkpoint.pth"):
        path = tmp_path / name
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        assert zipfile.is_zipfile(path) != legacy
        return path

    return save_


def test_torchvision_resnet_state_dict(save):
    torchvision_models = pytest.importorskip("torchvision.models")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torchvision_models.resnet18(num_classes=10)
    model.train()(torch.randn(2, 3, 32, 32))  # Non-trivial running stats.
    state_dict = model.state_dict()
    loaded = read_pth(save(state_dict))
    _assert_same_state_dict(loaded, state_dict)
    assert loaded["bn1.num_batches_tracked"].dtype == np.int64


def test_views_share_storage_and_keep_offsets_and_strides(save):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    tensors = {
        "base": base,
        "rows_cols": base[1:, ::2],
        "transposed": base.t(),
        "offset_row": base[3],
        "column": base[:, 7],
        "expanded": torch.tensor([1.5, -2.0]).expand(3, 2),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }
    loaded = read_pth(save(tensors))
    for key, tensor in tensors.items():
        _assert_same_array(loaded[key], tensor)
    # Copies: writing one does not show through another.
    loaded["base"][0, 0] = 100.0
    assert loaded["transposed"][0, 0] == 0.0


@pytest.mark.parametrize("dtype_name", [
    "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"])
def test_dtypes(save, dtype_name):
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    values = torch.tensor([[0.0, -1.0, 2.5], [7.0, 1e3, -0.0]])
    if dtype.is_floating_point:
        values = torch.cat([values, torch.tensor([[float("inf"), float("nan"), 1e-3]])])
    tensor = values.to(dtype)
    loaded = read_pth(save({"t": tensor, "view": tensor[1:, 1:]}))
    _assert_same_array(loaded["t"], tensor)
    _assert_same_array(loaded["view"], tensor[1:, 1:])


def test_checkpoint_dict_with_parameters_and_plain_values(save):
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(3, 2)
    checkpoint = {
        "state_dict": layer.state_dict(),
        "epoch": 3,
        "best": 0.75,
        "name": "run-1",
        "history": [1, 2.5, None, True],
        "pair": (layer.weight, "x"),  # A Parameter, not a plain tensor.
    }
    loaded = read_pth(save(checkpoint))
    _assert_same_state_dict(loaded["state_dict"], layer.state_dict())
    assert (loaded["epoch"], loaded["best"], loaded["name"]) == (3, 0.75, "run-1")
    assert loaded["history"] == [1, 2.5, None, True]
    _assert_same_array(loaded["pair"][0], layer.weight)
    assert loaded["pair"][1] == "x"


def test_the_same_tensor_twice_is_one_array(save):
    torch = pytest.importorskip("torch")
    tensor = torch.ones(3)
    loaded = read_pth(save({"a": tensor, "b": [tensor]}))
    assert loaded["a"] is loaded["b"][0]


# -- files that would run code ------------------------------------------------

class _RunsCommand:
    """Unpickling this under plain pickle runs ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsExec:
    def __reduce__(self):
        return (builtins.exec, ("open('MARKER_EXEC', 'w').close()",))


def _zip_checkpoint(path, data_pkl: bytes, prefix="archive", records=None):
    """A zip laid out as torch.save writes it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", "little")
        for name, data in (records or {}).items():
            archive.writestr(f"{prefix}/{name}", data)
        archive.writestr(f"{prefix}/version", "3\n")
    return path


def _legacy_checkpoint(path, main_pickle: bytes, keys=(), storages=b""):
    """A stream laid out as torch.save(..., _use_new_zipfile_serialization=False)
    writes it."""
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, 1001, sys_info):
            pickle.dump(header, f, protocol=2)
        f.write(main_pickle)
        pickle.dump(list(keys), f, protocol=2)
        f.write(storages)
    return path


# The module that really holds os.system ("posix" on Linux), which is what
# the standard pickler writes.
SYSTEM = f"{os.system.__module__}.system"


def _op(value) -> bytes:
    """The opcodes that push ``value`` (a plain value) onto the stack."""
    return pickle.dumps(value, protocol=2)[2:-1]  # Without PROTO and STOP.


def _malicious_payloads(marker):
    command = f"touch {marker}"
    return {
        # Hand-written opcodes, as an attacker would: GLOBAL, the argument
        # tuple, REDUCE.
        "os.system": b"\x80\x02cos\nsystem\n" + _op(command) + b"\x85R.",
        "subprocess.Popen": b"csubprocess\nPopen\n((S'touch'\nS'" + str(marker).encode()
                            + b"'\nltR.",
        # What the standard pickler makes of objects that reduce to code.
        SYSTEM: pickle.dumps({"w": _RunsCommand(command)}, protocol=2),
        "builtins.exec": pickle.dumps(_RunsExec(), protocol=4),
        "argparse.Namespace": pickle.dumps({"args": argparse.Namespace(lr=0.1)}, protocol=2),
    }


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("refused", ["os.system", "subprocess.Popen", SYSTEM, "builtins.exec",
                                     "argparse.Namespace"])
def test_malicious_pickle_is_refused_before_running(tmp_path, monkeypatch, layout, refused):
    monkeypatch.chdir(tmp_path)  # Where the payloads would create their markers.
    marker = tmp_path / "MARKER"
    payload = _malicious_payloads(marker)[refused]
    path = tmp_path / "evil.pth"
    if layout == "zip":
        _zip_checkpoint(path, payload)
    else:
        _legacy_checkpoint(path, payload)
    with pytest.raises(UnsafePickleError) as caught:
        read_pth(path)
    message = str(caught.value)
    assert str(path) in message
    assert refused in message
    assert "only tensors and plain containers" in message
    assert not marker.exists() and not (tmp_path / "MARKER_EXEC").exists()


def test_the_payloads_are_live(tmp_path):
    # Without this, the test above could pass on payloads that do nothing.
    marker = tmp_path / "MARKER"
    pickle.loads(_malicious_payloads(marker)["os.system"])
    assert marker.exists()


def test_malicious_global_inside_a_real_checkpoint_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.ones(2), "hook": _RunsCommand("touch MARKER")}, path)
    with pytest.raises(UnsafePickleError, match=SYSTEM):
        read_pth(path)


def test_a_pickled_module_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafePickleError, match="torch.nn.modules.linear.Linear"):
        read_pth(path)


def test_persistent_ids_other_than_storage_are_refused(tmp_path):
    # BINPERSID on ("module", ...): legacy torch's way to pickle a class.
    payload = b"\x80\x02(X\x06\x00\x00\x00moduleX\x01\x00\x00\x00xtQ."
    path = _legacy_checkpoint(tmp_path / "module.pth", payload)
    with pytest.raises(UnsafePickleError, match="'module'"):
        read_pth(path)


# -- damaged and foreign files ------------------------------------------------

def test_non_torch_file_names_the_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.pth") as caught:
        read_pth(path)
    assert not isinstance(caught.value, UnsafePickleError)


def test_plain_zip_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match=r"other\.zip.*data\.pkl"):
        read_pth(path)


def test_truncated_zip_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.arange(1000.0)}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.pth.*truncated"):
        read_pth(cut)


def test_truncated_legacy_file_names_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.arange(1000.0)}, whole, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.pth.*truncated"):
        read_pth(cut)


def _tensor_pickle(key="0", offset=0, size=(2,), stride=(1,), numel=2) -> bytes:
    """data.pkl of ``{"w": tensor}`` as torch writes it, from opcodes (the
    globals are torch's, so the standard pickler cannot write them)."""
    storage_pid = (b"(" + _op("storage") + b"ctorch\nFloatStorage\n" + _op(key)
                   + _op("cpu") + _op(numel) + b"t")  # MARK ... TUPLE
    rebuild_args = (b"(" + storage_pid + b"Q"  # BINPERSID
                    + _op(offset) + _op(size) + _op(stride) + _op(False)
                    + b"ccollections\nOrderedDict\n)R"  # backward hooks
                    + b"t")
    return (b"\x80\x02}" + _op("w") + b"ctorch._utils\n_rebuild_tensor_v2\n"
            + rebuild_args + b"R" + b"s.")  # REDUCE, SETITEM, STOP


def test_missing_storage_record_names_file_and_record(tmp_path):
    path = _zip_checkpoint(tmp_path / "nodata.pth", _tensor_pickle(key="0"))
    with pytest.raises(ValueError, match=r"nodata\.pth.*data/0.*missing"):
        read_pth(path)


def test_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    data = np.arange(2, dtype=np.float32).tobytes()
    path = _zip_checkpoint(tmp_path / "far.pth", _tensor_pickle(size=(2,), stride=(1000,)),
                           records={"data/0": data})
    with pytest.raises(ValueError, match=r"far\.pth.*reaches element 1000"):
        read_pth(path)


def test_hand_built_zip_checkpoint_reads(tmp_path):
    data = np.array([1.5, -2.0, 4.0], dtype=np.float32).tobytes()
    path = _zip_checkpoint(tmp_path / "ok.pth", _tensor_pickle(offset=1, size=(2,), numel=3),
                           records={"data/0": data})
    loaded = read_pth(path)
    np.testing.assert_array_equal(loaded["w"], np.array([-2.0, 4.0], np.float32))


def test_big_endian_zip_is_refused(tmp_path):
    path = tmp_path / "big.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("big/data.pkl", pickle.dumps({}, protocol=2))
        archive.writestr("big/byteorder", "big")
    with pytest.raises(ValueError, match=r"big\.pth.*little-endian"):
        read_pth(path)
