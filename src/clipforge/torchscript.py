"""Read the weights out of a TorchScript archive (OpenAI's released `.pt` files) without running it.

`torch.jit.load` would compile and run the archive's code. Instead the archive's `data.pkl` is read
with an unpickler that builds only tensors, ordered dicts and plain attribute holders for the
scripted modules; any other global it names is refused. Everything the archive declares is treated
as untrusted: each storage's declared size must match its record before anything is allocated, each
tensor view must lie inside its storage, a storage referenced many times is read once, and a module
tree that refers back to itself is an error, not an endless walk.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from typing import Any

import torch

from .errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MAX_COMPRESSION = 100  # a storage record inflating more than this is refused (torch stores them uncompressed)
_MAX_DEPTH = 1000  # nesting of scripted modules


class _ScriptObject:
    """Stand-in for a scripted module: pickle's BUILD fills its __dict__ with the attributes."""


class _StorageType:
    """A storage class named by the pickle (`torch.FloatStorage` ...): only its dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> torch.Tensor:
    """A copy of the view (offset, size, stride) of `storage`, after checking it lies inside it."""
    ints = [offset, *size, *stride]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or len(size) != len(stride):
        raise CheckpointError(f"TorchScript archive declares an invalid tensor view (offset {offset}, size {size})")
    if math.prod(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel():
        raise CheckpointError(
            f"TorchScript archive declares a tensor view of size {tuple(size)} outside its storage of "
            f"{storage.numel()} elements; the file is damaged or crafted"
        )
    return torch.as_strided(storage, size, stride, offset).clone()


def is_torchscript(path: str) -> bool:
    """Whether `path` is a zip archive torch would hand to its TorchScript loader: one holding a
    `constants.pkl` record (the test `torch.load` uses), with or without `code/`."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n == "constants.pkl" or (n.endswith("/constants.pkl") and n.count("/") == 1) for n in names)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, archive_size: int) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.archive_size = zf, prefix, archive_size
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"TorchScript archive refers to {module}.{name}, which clipforge will not load")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported storage record in TorchScript archive: {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise CheckpointError(f"unsupported storage record in TorchScript archive: {str(pid)[:80]}")
        if key in self.storages:  # one storage, many views: read once
            storage = self.storages[key]
            if storage.dtype != storage_type.dtype or storage.numel() != numel:
                raise CheckpointError(f"TorchScript archive declares storage {key} twice with different types")
            return storage
        name = f"{self.prefix}/data/{key}"
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"TorchScript archive lacks the storage record {name}") from None
        itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
        if numel < 0 or numel * itemsize != info.file_size:
            raise CheckpointError(
                f"TorchScript archive declares {numel} elements ({numel * itemsize} bytes) for storage {key}, "
                f"whose record holds {info.file_size} bytes; the file is damaged or crafted"
            )
        inflated = info.compress_type != zipfile.ZIP_STORED
        if info.file_size > self.archive_size * (_MAX_COMPRESSION if inflated else 1):
            raise CheckpointError(f"TorchScript archive's storage {key} claims {info.file_size} bytes; refused")
        raw = bytearray(self.zf.read(name))
        storage = torch.frombuffer(raw, dtype=storage_type.dtype) if raw else torch.empty(0, dtype=storage_type.dtype)
        self.storages[key] = storage
        return storage


def _flatten(root: _ScriptObject) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the module tree, keyed like `state_dict()` (depth first, in attribute
    order); walked without recursion, refusing a module reached twice (a tree that refers back to
    itself, or a crafted graph whose shared modules would multiply the walk)."""
    out: dict[str, torch.Tensor] = {}
    seen = {id(root)}
    stack = [(iter(list(vars(root).items())), "", [id(root)])]
    while stack:
        items, prefix, path = stack[-1]
        for name, value in items:
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                if id(value) in path:
                    raise CheckpointError(f"TorchScript archive's module {prefix}{name} contains itself; refused")
                if id(value) in seen:
                    raise CheckpointError(f"TorchScript archive reaches module {prefix}{name} twice; refused")
                seen.add(id(value))
                if len(path) >= _MAX_DEPTH:
                    raise CheckpointError(f"TorchScript archive nests modules more than {_MAX_DEPTH} deep; refused")
                stack.append((iter(list(vars(value).items())), f"{prefix}{name}.", [*path, id(value)]))
                break  # descend; this level's iterator resumes after the child is done
        else:
            stack.pop()
    return out


def read_torchscript_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript module archive, keyed like `module.state_dict()`."""
    import os

    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pkl:
                raise CheckpointError(f"{path} is a zip archive without data.pkl: not a TorchScript module")
            prefix = pkl[0].split("/")[0]
            root = _Unpickler(zf.read(pkl[0]), zf, prefix, os.path.getsize(path)).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: TorchScript archive nests its data too deeply; refused") from None
    except Exception as e:  # malformed pickle stream, damaged zip, bad CRC, ...
        raise CheckpointError(f"could not read TorchScript archive {path}: {type(e).__name__}: {e}") from e
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: TorchScript archive does not hold a module")
    return _flatten(root)
