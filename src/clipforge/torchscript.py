"""Read the weights out of a TorchScript archive (OpenAI's released `.pt` files) without running it.

`torch.jit.load` would compile and run the archive's code. Instead the archive's `data.pkl` is read
with an unpickler that builds only tensors, ordered dicts and plain attribute holders for the
scripted modules; any other global it names is refused.
"""

from __future__ import annotations

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


class _ScriptObject:
    """Stand-in for a scripted module: pickle's BUILD fills its __dict__ with the attributes."""


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


def is_torchscript(path: str) -> bool:
    """Whether `path` is a TorchScript zip archive (constants.pkl plus code/), like OpenAI's JIT checkpoints."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.zf, self.prefix = zf, prefix

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
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unsupported storage record in TorchScript archive: {pid!r}")
        raw = bytearray(self.zf.read(f"{self.prefix}/data/{key}"))
        if not raw:
            return torch.empty(0, dtype=storage_type.dtype)
        return torch.frombuffer(raw, dtype=storage_type.dtype)[:numel]


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _flatten(value, f"{prefix}{name}.", out)


def read_torchscript_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript module archive, keyed like `module.state_dict()`."""
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path} is a zip archive without data.pkl: not a TorchScript module")
        prefix = pkl[0].split("/")[0]
        try:
            root = _Unpickler(zf.read(pkl[0]), zf, prefix).load()
        except CheckpointError:
            raise
        except Exception as e:  # malformed pickle stream, missing storage file, ...
            raise CheckpointError(f"could not read TorchScript archive {path}: {e}") from e
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: TorchScript archive does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _flatten(root, "", out)
    return out
