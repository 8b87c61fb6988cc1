"""Read PyTorch checkpoints (``torch.save`` files) without torch.

`read_pth` returns the saved object with every tensor as a numpy
array. The pickle inside is read by a restricted unpickler: only tensors,
storages and ``OrderedDict`` are rebuilt, by local functions, and any other
global is refused before anything runs, so a file from the internet cannot
execute code. Both formats ``torch.save`` writes are read: the zip archive
(torch >= 1.6) and the older "legacy" stream.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Callable

import ml_dtypes
import numpy as np

__all__ = ("UnsafePickleError", "read_pth")

# torch/serialization.py: the first three pickles of the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Native dtypes; the bytes are little-endian (the only byte order read), so
# a big-endian host swaps them after the copy.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

ACCEPTED = "only tensors and plain containers (dict, list, tuple, OrderedDict, numbers, strings) are accepted"


class UnsafePickleError(ValueError):
    """The checkpoint's pickle asks for something other than tensors and
    plain containers (it could run code if unpickled by torch.load)."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: just the dtype."""
    name: str
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A persistent id resolved: which storage, read as which dtype. The
    bytes come later (the legacy format writes them after the pickle)."""
    key: str
    dtype: np.dtype
    numel: int
    view: tuple[str, int, int] | None = None  # legacy views: key, offset, numel


# Frozen (and slotted) so that a BUILD opcode in a crafted pickle cannot
# change a tensor's description after it was made.
@dataclass(frozen=True, slots=True)
class _PendingTensor:
    storage: _StorageRef
    offset: object
    shape: object
    strides: object


def _rebuild_tensor(storage, storage_offset, size, stride):
    if not isinstance(storage, _StorageRef):
        raise TypeError(f"a tensor's storage must come from a persistent id, not {type(storage).__name__}")
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
    del requires_grad, backward_hooks, metadata  # Autograd state: not weights.
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    del requires_grad, backward_hooks, state
    if not isinstance(data, _PendingTensor):
        raise TypeError(f"a Parameter must wrap a tensor, not {type(data).__name__}")
    return data


def _ordered_dict(*args):
    # A real OrderedDict: BUILD then sets only its __dict__ (state dicts carry
    # `_metadata` there), which runs nothing.
    return collections.OrderedDict(*args)


SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers; refuses every other global."""

    def __init__(self, file: BinaryIO, path: str, on_storage: Callable[[_StorageRef], None]):
        super().__init__(file)
        self._path = path
        self._on_storage = on_storage

    def find_class(self, module, name):
        try:
            return SAFE_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self._path}: refusing to unpickle the global {module}.{name}: "
                f"{ACCEPTED}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafePickleError(
                f"{self._path}: refusing the persistent id {kind!r} (only 'storage' "
                f"ids are read; a pickled module or class is code): {ACCEPTED}")
        ref = _storage_ref(pid)
        self._on_storage(ref)
        return ref


def _storage_ref(pid: tuple) -> _StorageRef:
    # zip: ("storage", type, key, location, numel)
    # legacy: ("storage", type, key, location, numel, view_metadata)
    if len(pid) not in (5, 6):
        raise ValueError(f"a storage persistent id has 5 or 6 fields, not {len(pid)}")
    storage_type, key, numel = pid[1], _text(pid[2]), pid[4]
    if not isinstance(storage_type, _StorageType):
        raise ValueError(f"a storage persistent id names {storage_type!r}, not a storage type")
    if not _is_int(numel) or numel < 0:
        raise ValueError(f"storage {key!r} has element count {numel!r}, not an int >= 0")
    view = pid[5] if len(pid) == 6 else None
    if view is not None:
        if not (isinstance(view, tuple) and len(view) == 3 and all(_is_int(v) for v in view[1:])):
            raise ValueError(f"storage {key!r} has view metadata {view!r}, not (key, offset, size)")
        view = (_text(view[0]), view[1], view[2])
    return _StorageRef(key, storage_type.dtype, numel, view)


def _text(value) -> str:
    # Python 2 era files may hold keys as bytes.
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_pth(path: str | os.PathLike) -> object:
    """The object saved in the torch checkpoint ``path``, every tensor as a
    C-contiguous numpy array. Runs no code from the file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        if head.startswith(b"PK"):
            raise ValueError(
                "it starts like a zip archive but has no readable central "
                "directory: the file is truncated (an interrupted download?) "
                "or damaged; download or save it again")
        with open(path, "rb") as f:
            return _read_legacy(f, path)
    except UnsafePickleError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError,
            OverflowError, MemoryError, RecursionError, pickle.UnpicklingError,
            zipfile.BadZipFile, struct.error) as e:
        raise ValueError(f"cannot read the PyTorch checkpoint {path}: {e}") from e


# -- zip format ---------------------------------------------------------------

def _read_zip(path: str) -> object:
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive)
        byteorder = _record(archive, prefix + "byteorder")
        # No record: torch (>= 2.1) reads the file as little-endian too.
        if byteorder is not None and byteorder.strip() != b"little":
            raise ValueError(
                f"its byteorder record says {byteorder.decode(errors='replace')!r}; "
                "only little-endian checkpoints are read")
        data_pkl = archive.read(prefix + "data.pkl")
        unpickler = _RestrictedUnpickler(io.BytesIO(data_pkl), path, lambda ref: None)
        result = unpickler.load()

        def storage_bytes(key: str) -> bytes:
            record = _record(archive, f"{prefix}data/{key}")
            if record is None:
                raise ValueError(f"the storage record {prefix}data/{key} is missing")
            return record

        return _materialize(result, _StorageCache(storage_bytes))


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    # torch names the archive's single top folder after the file's stem
    # ("archive" when saving to a buffer); renaming the file keeps the old one.
    names = archive.namelist()
    tops = {name.split("/", 1)[0] for name in names if "/" in name}
    if any(name.endswith("/constants.pkl") for name in names):
        raise ValueError("it is a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
    candidates = [top for top in tops if f"{top}/data.pkl" in names]
    if len(candidates) != 1:
        raise ValueError(
            "it is a zip archive but not a torch.save checkpoint: expected one "
            f"<folder>/data.pkl record, found {len(candidates)}")
    return candidates[0] + "/"


def _record(archive: zipfile.ZipFile, name: str) -> bytes | None:
    try:
        return archive.read(name)
    except KeyError:
        return None


# -- legacy format ------------------------------------------------------------

def _read_legacy(f: BinaryIO, path: str) -> object:
    def load_header_pickle(what: str):
        try:
            return _RestrictedUnpickler(f, path, _no_storage).load()
        except UnsafePickleError:
            raise
        except Exception:  # Arbitrary bytes: any unpickling error.
            raise ValueError(
                "it is neither a zip archive nor a legacy torch.save stream "
                f"(no pickled {what} where torch writes one)") from None

    magic = load_header_pickle("magic number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError("it is neither a zip archive nor a legacy torch.save stream "
                         f"(its first pickle is {_short_repr(magic)}, not torch's magic number)")
    protocol = load_header_pickle("protocol version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"legacy protocol version {protocol!r}; only {LEGACY_PROTOCOL_VERSION} is read")
    sys_info = load_header_pickle("sys_info")
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise ValueError("it was saved on a big-endian machine; only little-endian checkpoints are read")

    # The storages follow the pickle, so the main pickle only records which
    # storage (and dtype) each tensor needs.
    dtypes: dict[str, np.dtype] = {}
    result = _RestrictedUnpickler(f, path, lambda ref: dtypes.setdefault(ref.key, ref.dtype)).load()

    keys = _RestrictedUnpickler(f, path, _no_storage).load()
    if not (isinstance(keys, list) and all(isinstance(k, (str, bytes)) for k in keys)):
        raise ValueError(f"the list of storage keys after the pickle is {_short_repr(keys)}")
    data: dict[str, bytes] = {}
    for key in map(_text, keys):
        if key not in dtypes:
            raise ValueError(f"storage {key!r} is listed but no tensor uses it, so its dtype is unknown")
        data[key] = _read_legacy_storage(f, key, dtypes[key].itemsize)

    def storage_bytes(key: str) -> bytes:
        if key not in data:
            raise ValueError(f"the storage record for key {key!r} is missing")
        return data[key]

    return _materialize(result, _StorageCache(storage_bytes))


def _read_legacy_storage(f: BinaryIO, key: str, itemsize: int) -> bytes:
    # torch/csrc/serialization.cpp: int64 element count (little-endian), then
    # the raw bytes.
    header = f.read(8)
    if len(header) != 8:
        raise ValueError(f"the file ends before storage {key!r} (truncated?)")
    (numel,) = struct.unpack("<q", header)
    if numel < 0:
        raise ValueError(f"storage {key!r} has element count {numel}")
    nbytes = numel * itemsize
    payload = f.read(nbytes)
    if len(payload) != nbytes:
        raise ValueError(f"storage {key!r} should hold {nbytes} bytes but the file "
                         f"ends after {len(payload)} (truncated?)")
    return payload


def _no_storage(ref: _StorageRef) -> None:
    raise ValueError("a storage persistent id outside the main pickle")


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- tensors ------------------------------------------------------------------

class _StorageCache:
    """Each storage's bytes, read once, viewed as the dtype a tensor asks."""

    def __init__(self, storage_bytes: Callable[[str], bytes]):
        self._storage_bytes = storage_bytes
        self._bytes: dict[str, bytes] = {}

    def array(self, ref: _StorageRef) -> np.ndarray:
        key = ref.key
        if key not in self._bytes:
            self._bytes[key] = self._storage_bytes(key)
        raw = self._bytes[key]
        itemsize = ref.dtype.itemsize
        if len(raw) % itemsize:
            raise ValueError(f"storage {key!r} has {len(raw)} bytes, not a multiple of "
                             f"{ref.dtype} elements ({itemsize} bytes)")
        flat = np.frombuffer(raw, dtype=ref.dtype)
        if ref.view is not None:  # Pre-1.0 files: a storage viewing another.
            _, start, size = ref.view
            if start < 0 or size < 0 or start + size > flat.size:
                raise ValueError(f"storage view {ref.view!r} lies outside storage {key!r} "
                                 f"of {flat.size} elements")
            flat = flat[start:start + size]
        return flat


def _tensor_array(tensor: _PendingTensor, storages: _StorageCache) -> np.ndarray:
    flat = storages.array(tensor.storage)
    shape = _int_tuple(tensor.shape, "size")
    strides = _int_tuple(tensor.strides, "stride")
    offset = tensor.offset
    if len(shape) != len(strides):
        raise ValueError(f"a tensor has size {shape} but stride {strides}")
    if not _is_int(offset) or offset < 0 or any(s < 0 for s in shape + strides):
        raise ValueError(f"a tensor has offset {offset!r}, size {shape}, stride {strides}: "
                         "all must be ints >= 0")
    if 0 in shape:
        return np.zeros(shape, dtype=flat.dtype)
    # as_strided reads whatever memory the numbers point at: check that the
    # farthest element lies inside the storage first.
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= flat.size:
        raise ValueError(
            f"a tensor (offset {offset}, size {shape}, stride {strides}) reaches element "
            f"{last} of storage {tensor.storage.key!r}, which has {flat.size}")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=shape, strides=tuple(s * flat.itemsize for s in strides),
        writeable=False)
    array = np.array(view, order="C")  # A copy: owns its memory, writeable.
    if sys.byteorder != "little":
        array.byteswap(inplace=True)
    return array


def _int_tuple(value, what: str) -> tuple[int, ...]:
    if not (isinstance(value, (tuple, list)) and all(_is_int(v) for v in value)):
        raise ValueError(f"a tensor's {what} is {_short_repr(value)}, not a tuple of ints")
    return tuple(value)


def _materialize(obj, storages: _StorageCache):
    """``obj`` with every pending tensor replaced by its array (in place for
    lists and dicts; shared and cyclic references kept)."""
    # id -> (original, replacement); holding the original keeps its id
    # from being reused by a new object while we walk.
    done: dict[int, tuple[object, object]] = {}

    def visit(value):
        if id(value) in done:
            return done[id(value)][1]
        if isinstance(value, _PendingTensor):
            result = _tensor_array(value, storages)
            done[id(value)] = (value, result)
            return result
        if isinstance(value, (_StorageRef, _StorageType)):
            raise ValueError("a bare storage (not inside a tensor) is not read")
        if isinstance(value, dict):
            done[id(value)] = (value, value)
            for key, item in value.items():
                value[key] = visit(item)
            if isinstance(value, collections.OrderedDict):
                attributes = vars(value)
                for name, item in attributes.items():
                    attributes[name] = visit(item)
            return value
        if isinstance(value, list):
            done[id(value)] = (value, value)
            value[:] = [visit(item) for item in value]
            return value
        if isinstance(value, tuple):
            # Built anew; a tuple reached again while being built (a cycle
            # through a list or dict) stays the old one, which ends the cycle.
            done[id(value)] = (value, value)
            result = tuple(visit(item) for item in value)
            done[id(value)] = (value, result)
            return result
        return value

    return visit(obj)
