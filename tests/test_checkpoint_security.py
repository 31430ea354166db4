"""Untrusted checkpoint files: TorchScript archives are read without running anything, every size they
declare is checked before anything is allocated, cycles and deep nesting are refused with a
CheckpointError, one storage is read once, and an unsafe torch refuses to unpickle at all."""

from __future__ import annotations

import struct
import zipfile

import pytest
import torch

import clipforge
from clipforge.checkpoints import check_safe_torch
from clipforge.errors import CheckpointError
from clipforge.torchscript import is_torchscript, read_torchscript_state_dict


# --------------------------------------------------------------- a tiny pickle assembler (protocol 2)
def g(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:  # BININT (LONG1 for big values)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def tensor(key: str, numel: int, offset: int = 0, size: tuple[int, ...] = (), stride: tuple[int, ...] = ()) -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, OrderedDict())."""
    size, stride = size or (numel,), stride or (1,)
    storage = tup(s("storage"), g("torch", "FloatStorage"), s(key), s("cpu"), i(numel)) + b"Q"  # BINPERSID
    args = tup(
        storage, i(offset), tup(*map(i, size)), tup(*map(i, stride)), b"\x89", g("collections", "OrderedDict") + b")R"
    )
    return g("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def module(attrs: dict[str, bytes]) -> bytes:
    """A scripted module whose attributes are the given pickled values."""
    body = b"".join(s(k) + v + b"s" for k, v in attrs.items())
    return g("__torch__.M", "M") + b")\x81" + b"}" + body + b"b"


def archive(path, data_pkl: bytes, storages: dict[str, bytes] | None = None, code: bool = True):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + data_pkl + b".")
        z.writestr("archive/constants.pkl", b"\x80\x02).")
        z.writestr("archive/version", b"3\n")
        if code:
            z.writestr("archive/code/__torch__.py", b"# scripted code: never compiled or run by clipforge\n")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return str(path)


FOUR_FLOATS = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


# ------------------------------------------------------------------------------------------ tests
def test_the_assembler_builds_what_the_reader_reads(tmp_path):
    path = archive(
        tmp_path / "ok.pt",
        module({"w": tensor("0", 4), "sub": module({"b": tensor("0", 4, 2, (2,))})}),
        {"0": FOUR_FLOATS},
    )
    sd = read_torchscript_state_dict(path)
    assert list(sd) == ["w", "sub.b"]
    assert torch.equal(sd["w"], torch.tensor([1.0, 2.0, 3.0, 4.0])) and torch.equal(
        sd["sub.b"], torch.tensor([3.0, 4.0])
    )


def test_an_archive_with_constants_pkl_but_no_code_is_torchscript(tmp_path):
    """torch.load sends any archive with constants.pkl to the TorchScript loader; so must the check."""
    path = archive(tmp_path / "nocode.pt", module({"w": tensor("0", 4)}), {"0": FOUR_FLOATS}, code=False)
    assert is_torchscript(path)
    assert torch.equal(read_torchscript_state_dict(path)["w"], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_an_archive_naming_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = g("os", "system") + tup(s(f"touch {marker}")) + b"R"
    path = archive(tmp_path / "evil.pt", module({"w": evil}))
    with pytest.raises(CheckpointError, match=r"refers to os\.system"):
        clipforge.load(path)
    assert not marker.exists()
    builtin = g("builtins", "eval") + tup(s(f"open({str(marker)!r}, 'w')")) + b"R"
    with pytest.raises(CheckpointError, match=r"builtins\.eval"):
        read_torchscript_state_dict(archive(tmp_path / "evil2.pt", module({"w": builtin})))
    assert not marker.exists()


def test_a_module_that_contains_itself_is_refused(tmp_path):
    # M() memoised as 0, then its dict gets "me" -> memo 0 (itself)
    cyclic = g("__torch__.M", "M") + b")\x81q\x00}" + s("me") + b"h\x00sb"
    with pytest.raises(CheckpointError, match="contains itself"):
        read_torchscript_state_dict(archive(tmp_path / "cycle.pt", cyclic))


def test_absurdly_deep_nesting_is_refused(tmp_path):
    data = tensor("0", 4)
    for _ in range(5000):
        data = module({"m": data})
    with pytest.raises(CheckpointError, match="deep"):
        read_torchscript_state_dict(archive(tmp_path / "deep.pt", data, {"0": FOUR_FLOATS}))


def test_one_storage_referenced_many_times_is_read_once(tmp_path, monkeypatch):
    views = {f"v{k}": tensor("0", 4, k % 4, (1,)) for k in range(500)}
    path = archive(tmp_path / "views.pt", module(views), {"0": FOUR_FLOATS})
    reads = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or original(self, name, *a))
    sd = read_torchscript_state_dict(path)
    assert len(sd) == 500 and sd["v7"].item() == 4.0
    assert reads.count("archive/data/0") == 1


@pytest.mark.parametrize(
    "value, match",
    [
        (tensor("0", 10**12), "declares 1000000000000 elements"),  # checked before any allocation
        (tensor("0", 2), "whose record holds 16 bytes"),
        (tensor("0", 4, offset=3, size=(2,)), "outside its storage"),
        (tensor("0", 4, size=(2, 3), stride=(3, 1)), "outside its storage"),
        (tensor("0", 4, offset=-1, size=(1,)), "invalid tensor view"),
        (tensor("missing", 4), "lacks the storage record"),
    ],
)
def test_declared_sizes_are_checked_against_the_records(tmp_path, value, match):
    with pytest.raises(CheckpointError, match=match):
        read_torchscript_state_dict(archive(tmp_path / "bad.pt", module({"w": value}), {"0": FOUR_FLOATS}))


def test_a_storage_record_that_would_inflate_enormously_is_refused(tmp_path):
    path = tmp_path / "bomb.pt"
    numel = 50_000_000  # 200 MB of zeros, deflated to a few hundred kB
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + module({"w": tensor("0", numel)}) + b".")
        z.writestr("archive/constants.pkl", b"\x80\x02).")
        z.writestr("archive/data/0", bytes(4 * numel), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(CheckpointError, match="refused"):
        read_torchscript_state_dict(str(path))


def test_an_unsafe_torch_refuses_to_unpickle(tmp_path, monkeypatch):
    for version in ("2.1.0", "2.5.1+cu121", "2.9.1"):
        with pytest.raises(CheckpointError, match="CVE-2025-32434"):
            check_safe_torch(version)
    check_safe_torch("2.10.0")
    check_safe_torch("2.13.0+cpu")
    path = tmp_path / "sd.pt"
    torch.save(clipforge.create_model("tiny-vit").state_dict(), path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(CheckpointError, match="torch>=2.10"):
        clipforge.load(path)


def test_a_module_graph_that_reaches_one_module_twice_is_refused(tmp_path):
    """Shared modules would let a few kilobytes multiply the walk (each level doubling it)."""
    inner = g("__torch__.M", "M") + b")\x81q\x01}" + s("w") + tensor("0", 4) + b"sb"  # memoised as 1
    shared = g("__torch__.M", "M") + b")\x81}" + s("a") + inner + b"s" + s("b") + b"h\x01sb"
    with pytest.raises(CheckpointError, match="twice"):
        read_torchscript_state_dict(archive(tmp_path / "dag.pt", shared, {"0": FOUR_FLOATS}))
