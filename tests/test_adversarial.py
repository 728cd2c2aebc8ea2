"""Adversarial files: every one is a SourceError naming the file, no code runs, memory stays
bounded, and the destination is left exactly as it was."""

from __future__ import annotations

import io
import json
import pickle
import tracemalloc
import zipfile

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, assert_unchanged, randomized, snapshot
from structload.sources import torch_file


@pytest.fixture
def state():
    return randomized(Net(n=2), 3).state_dict()


def expect_source_error(path, dst=None) -> sl.SourceError:
    """Loading `path` must raise a SourceError naming it, leaving `dst` untouched."""
    dst = dst if dst is not None else randomized(Net(n=2), 9)
    before = snapshot(dst)
    with pytest.raises(sl.SourceError) as info:
        sl.load(dst, str(path))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)  # one clear line, no traceback text
    assert_unchanged(dst, before)
    return info.value


def cut_points(size: int, count: int = 40) -> list[int]:
    return sorted({0, 1, 7, 8, 9, size - 1} | {size * i // count for i in range(count)})


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_truncated_at_many_cut_points(tmp_path, state, fmt):
    whole = tmp_path / f"whole.{fmt}"
    if fmt == "safetensors":
        safetensors.torch.save_file(state, str(whole))
    else:
        torch.save(state, whole)
    raw = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    for point in cut_points(len(raw)):
        cut.write_bytes(raw[:point])
        expect_source_error(cut)


# --- crafted pickles: code must never run ----------------------------------------------------


def torch_zip(path, pickle_bytes: bytes, records: dict[str, bytes] | None = None) -> str:
    """A zip laid out like torch.save's, holding the given pickle."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        for name, data in (records or {}).items():
            archive.writestr(f"archive/data/{name}", data)
    return str(path)


class Payload:
    """Pickles to a call of `function(*args)` when unpickled with plain pickle."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def global_call(module: str, name: str, argument: str) -> bytes:
    """A protocol-2 pickle calling module.name(argument), written opcode by opcode."""
    arg = argument.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(arg).to_bytes(4, "little") + arg + b"\x85R."


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "open"),
        ("subprocess", "getoutput"),
        ("torch", "load"),
        ("torch.storage", "_load_from_bytes"),
        ("torch._utils", "_rebuild_tensor"),
        ("__builtin__", "eval"),
    ],
)
def test_pickles_needing_any_other_global_are_refused_and_run_nothing(tmp_path, module, name):
    marker = tmp_path / "ran"
    if name in ("system", "getoutput"):
        argument = f"touch {marker}"
    else:
        argument = f"open({str(marker)!r}, 'w').close()"
    path = torch_zip(tmp_path / "evil.pt", global_call(module, name, argument))
    error = expect_source_error(path, dst={"w": torch.zeros(1)})
    assert f"'{module}.{name}'" in str(error) and "not allowed" in str(error)
    assert not marker.exists()
    assert pickle.loads(global_call("builtins", "len", "four")) == 4  # the crafted form is a real call


def test_reduce_payload_inside_a_real_checkpoint_never_runs(tmp_path, state):
    marker = tmp_path / "ran"
    import os

    torch.save({"model": state, "hook": Payload(os.system, f"touch {marker}")}, tmp_path / "evil.pt")
    expect_source_error(tmp_path / "evil.pt")
    with pytest.raises(sl.SourceError):
        sl.open(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_bytearray_allocation_bomb_is_refused(tmp_path):
    data = b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x7f\x85R."  # bytearray(2**31 - ...)
    path = torch_zip(tmp_path / "alloc.pt", data)
    error = expect_source_error(path, dst={})
    assert "'builtins.bytearray'" in str(error)


class StorageRef:
    """Stands for a storage record; pickled as torch.save does, through a persistent id."""


def tensor_pickle(numel: int, size: tuple, offset: int = 0) -> bytes:
    """A data.pkl holding one tensor {"w": ...} over storage record '0' of `numel` floats."""

    class Tensor:
        def __reduce__(self):
            stride = tuple(reversed([1] + [size[-1 - i] for i in range(len(size) - 1)]))
            return torch._utils._rebuild_tensor_v2, (StorageRef(), offset, size, stride, False, None)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, StorageRef) else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"w": Tensor()})
    return buffer.getvalue()


def test_storage_references_are_validated(tmp_path):
    good = torch_zip(tmp_path / "good.pt", tensor_pickle(2, (2,)), {"0": b"\0" * 8})
    assert sl.inspect(good)["w"].shape == (2,)  # the crafted form is what torch.save writes
    with pytest.raises(sl.SourceError, match="holds 8 bytes, 400 expected"):
        sl.inspect(torch_zip(tmp_path / "short_record.pt", tensor_pickle(100, (100,)), {"0": b"\0" * 8}))
    with pytest.raises(sl.SourceError, match="reaches past the end of its storage record"):
        sl.inspect(torch_zip(tmp_path / "past_end.pt", tensor_pickle(2, (2,), offset=1), {"0": b"\0" * 8}))
    with pytest.raises(sl.SourceError, match="storage record 'archive/data/0' is missing"):
        sl.inspect(torch_zip(tmp_path / "no_record.pt", tensor_pickle(2, (2,))))


# --- zip bombs and memory -----------------------------------------------------------------------


def peak_traced(action):
    """``(result, peak bytes Python allocated)`` while running `action()`."""
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_zip_bomb_pickle_is_refused_with_bounded_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_file, "MAX_PICKLE_BYTES", 1 << 20)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB of zeros, a few KiB on disk
    assert path.stat().st_size < 1 << 20
    error, peak = peak_traced(lambda: expect_source_error(path, dst={}))
    assert "1048576-byte limit" in str(error)
    assert peak < 8 << 20


def test_zip_declaring_a_smaller_size_than_it_inflates_to(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_file, "MAX_PICKLE_BYTES", 1 << 20)
    path = tmp_path / "liar.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (16 << 20))
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # set the declared uncompressed size to 100 bytes
    raw[central + 24 : central + 28] = (100).to_bytes(4, "little")
    local = raw.find(b"PK\x03\x04")
    raw[local + 22 : local + 26] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    _, peak = peak_traced(lambda: expect_source_error(path, dst={}))
    assert peak < 8 << 20


def test_compressed_storage_records_are_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(64)}, good)
    bad = tmp_path / "deflated.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            compress = zipfile.ZIP_DEFLATED if "/data/" in item.filename else zipfile.ZIP_STORED
            zout.writestr(item.filename, zin.read(item.filename), compress_type=compress)
    assert "is compressed" in str(expect_source_error(bad, dst={"w": torch.zeros(64)}))


def test_huge_safetensors_header_length_reads_nothing_big(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    _, peak = peak_traced(lambda: expect_source_error(path))
    assert peak < 1 << 20


def test_safetensors_shape_too_large_for_its_bytes(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 16]}}
    text = json.dumps(header).encode()
    path = tmp_path / "lying.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"\0" * 16)
    assert "bytes for shape" in str(expect_source_error(path, dst={"w": torch.zeros(2, 2)}))


def test_missing_data_pickle_in_a_zip(tmp_path):
    path = tmp_path / "nopickle.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data/0", b"\0" * 8)
    assert "no '<archive>/data.pkl' record" in str(expect_source_error(path, dst={}))


def test_big_endian_torch_file_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    bad = tmp_path / "big.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = b"big" if item.filename.endswith("byteorder") else zin.read(item.filename)
            zout.writestr(item, data)
    assert "big-endian" in str(expect_source_error(bad, dst={"w": torch.zeros(2)}))


def test_every_file_error_leaves_a_meta_destination_meta(tmp_path, state):
    path = tmp_path / "cut.safetensors"
    safetensors.torch.save_file(state, str(path))
    path.write_bytes(path.read_bytes()[:-5])
    with torch.device("meta"):
        dst = Net(n=2)
    with pytest.raises(sl.SourceError):
        sl.load(dst, str(path))
    assert all(p.is_meta for p in dst.parameters())


def test_module_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert "legacy torch.save file, or not a checkpoint" in str(expect_source_error(path, dst=nn.Linear(2, 2)))


def test_unsupported_zip_version_found_by_the_fuzzer(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    raw = bytearray(good.read_bytes())
    central = raw.find(b"PK\x01\x02")
    raw[central + 6] = 0x7F  # "version needed to extract": 12.7
    bad = tmp_path / "version.pt"
    bad.write_bytes(bytes(raw))
    assert "NotImplementedError" in str(expect_source_error(bad, dst={"w": torch.zeros(2)}))


def test_deeply_nested_json_and_pickles(tmp_path):
    text = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    assert "not valid JSON" in str(expect_source_error(path, dst={}))
    deep = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."  # lists nested 200,000 deep
    assert "corrupt" in str(expect_source_error(torch_zip(tmp_path / "deep.pt", deep), dst={}))
