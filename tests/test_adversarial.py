"""Adversarial files: every one is a SourceError naming the file, no code runs, memory stays
bounded, and the destination is left exactly as it was."""

from __future__ import annotations

import contextlib
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
from structload.sources.formats import torch_file


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


# Pickles written opcode by opcode (see pickletools), as an attacker would.
PROTO2, PROTO4, STOP = b"\x80\x02", b"\x80\x04", b"."
MARK, TUPLE, TUPLE1, TUPLE2, EMPTY_TUPLE = b"(", b"t", b"\x85", b"\x86", b")"
REDUCE, BUILD, NEWOBJ, STACK_GLOBAL, EMPTY_DICT, SETITEM = b"R", b"b", b"\x81", b"\x93", b"}", b"s"
NONE, BINPERSID, OBJ = b"N", b"Q", b"o"


def text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def inst(module: str, name: str) -> bytes:
    return b"i" + f"{module}\n{name}\n".encode()


def global_call(module: str, name: str, argument: str) -> bytes:
    """A protocol-2 pickle calling module.name(argument)."""
    return PROTO2 + glob(module, name) + text(argument) + TUPLE1 + REDUCE + STOP


def shell(marker) -> str:
    return f"touch {marker}"


def python(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


DANGEROUS = [
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
]


def python3_name(module: str, name: str) -> str:
    return f"{'builtins' if module == '__builtin__' else module}.{name}"


def payload_for(name: str, marker) -> str:
    return shell(marker) if name in ("system", "getoutput") else python(marker)


def expect_inert(path, marker, *names: str) -> sl.LoadError:
    """Loading `path` into a small model raises a structload error naming `names`, runs nothing,
    and leaves the model as it was; opening it never runs anything either."""
    dst = {"w": torch.zeros(1)}
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, str(path))
    assert torch.equal(dst["w"], torch.zeros(1))
    for name in names:
        assert name in str(info.value)
    with contextlib.suppress(sl.LoadError, TypeError):
        sl.inspect(str(path))
        sl.open(str(path))
    assert not marker.exists()
    return info.value


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
def test_any_other_global_becomes_an_inert_placeholder(tmp_path, module, name):
    marker = tmp_path / "ran"
    path = torch_zip(tmp_path / "evil.pt", global_call(module, name, payload_for(name, marker)))
    error = expect_inert(path, marker, python3_name(module, name), "not imported or run")
    assert str(path) in str(error) and "\n" not in str(error)  # a pickle that is a single value: SourceError
    assert pickle.loads(global_call("builtins", "len", "four")) == 4  # the crafted form is a real call


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
def test_placeholders_inside_a_checkpoint_are_values_that_never_run(tmp_path, module, name, state):
    marker = tmp_path / "ran"
    call = glob(module, name) + text(payload_for(name, marker)) + TUPLE1 + REDUCE
    data = PROTO2 + EMPTY_DICT + text("hook") + call + SETITEM + STOP
    path = torch_zip(tmp_path / "evil.pt", data)
    hook = sl.open(path)["hook"]
    assert isinstance(hook, sl.Pickled) and hook.type_name == python3_name(module, name)
    assert hook.args == (payload_for(name, marker),)
    expect_inert(path, marker, "hook: unexpected in source", python3_name(module, name))


def test_reduce_payload_inside_a_real_checkpoint_never_runs(tmp_path, state):
    marker = tmp_path / "ran"
    import os

    torch.save({"model": state, "hook": Payload(os.system, shell(marker))}, tmp_path / "evil.pt")
    tree = sl.open(str(tmp_path / "evil.pt"))
    model = randomized(Net(n=2), 9)
    sl.load(model, tree["model"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert tree["hook"].type_name in ("posix.system", "nt.system")
    assert not marker.exists()


def test_bytearray_allocation_bomb_allocates_nothing(tmp_path):
    data = PROTO2 + glob("builtins", "bytearray") + b"J\x00\x00\x00\x7f" + TUPLE1 + REDUCE + STOP
    path = torch_zip(tmp_path / "alloc.pt", data)
    with pytest.raises(sl.LoadError, match="builtins.bytearray"):
        sl.load({}, path)
    tree, peak = peak_traced(
        lambda: sl.open(
            torch_zip(tmp_path / "inside.pt", data.replace(b"\x80\x02", b"\x80\x02}X\x01\x00\x00\x00x")[:-1] + b"s.")
        )
    )
    assert tree["x"].args == (0x7F000000,) and peak < 50 << 20


def test_build_never_sets_attributes_of_a_real_object(tmp_path):
    marker = tmp_path / "ran"
    evil = glob("os", "system") + text(shell(marker)) + TUPLE1 + REDUCE
    # BUILD on an OrderedDict (torch's own `_metadata` form), with a slot state as well
    ordered = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    path = torch_zip(tmp_path / "ordered.pt", PROTO2 + ordered + EMPTY_DICT + text("x") + evil + SETITEM + BUILD + STOP)
    tree = sl.open(path)
    assert list(tree) == [] and not marker.exists()
    path = torch_zip(
        tmp_path / "slots.pt",
        PROTO2 + ordered + NONE + EMPTY_DICT + text("__class__") + evil + SETITEM + TUPLE2 + BUILD + STOP,
    )
    assert type(sl.open(path)) is sl.SourceTree and not marker.exists()
    # BUILD on an allowed function, a storage type, and a tensor the pickle rebuilt
    for target in (glob("builtins", "list"), glob("torch", "FloatStorage"), glob("_codecs", "encode")):
        data = PROTO2 + target + EMPTY_DICT + text("__call__") + evil + SETITEM + BUILD + STOP
        with pytest.raises(sl.SourceError, match="tries to set attributes"):
            sl.open(torch_zip(tmp_path / "build.pt", data))
    assert not marker.exists()


def test_build_on_a_rebuilt_tensor_cannot_move_its_offset(tmp_path):
    data = (
        tensor_pickle(2, (2,))[:-2] + NONE + EMPTY_DICT + text("offset") + b"K\x00" + SETITEM + TUPLE2 + BUILD + b"s."
    )
    # tensor_pickle ends with SETITEM STOP: the BUILD goes between the tensor and the SETITEM
    with pytest.raises(sl.SourceError, match="tries to set attributes of UnpickledTensor"):
        sl.open(torch_zip(tmp_path / "moved.pt", data, {"0": b"\0" * 8}))


def test_nested_reduce_copyreg_inst_and_obj_run_nothing(tmp_path):
    marker = tmp_path / "ran"
    inner = glob("os", "system") + text(shell(marker)) + TUPLE1 + REDUCE
    cases = {
        "nested": glob("os", "system") + inner + TUPLE1 + REDUCE,
        "copyreg": glob("copyreg", "_reconstructor")
        + MARK
        + glob("os", "system")
        + glob("builtins", "object")
        + text(shell(marker))
        + TUPLE
        + REDUCE,
        "inst": MARK + text(shell(marker)) + inst("os", "system"),
        "obj": MARK + glob("os", "system") + text(shell(marker)) + OBJ,
        "newobj": glob("subprocess", "Popen") + text(shell(marker)) + TUPLE1 + NEWOBJ,
        "called_later": inner + text(shell(marker)) + TUPLE1 + REDUCE,  # a placeholder the pickle calls
        "setstate": glob("argparse", "Namespace")
        + EMPTY_TUPLE
        + NEWOBJ
        + EMPTY_DICT
        + text("x")
        + inner
        + SETITEM
        + BUILD,
    }
    for name, body in cases.items():
        data = PROTO2 + EMPTY_DICT + text(name) + body + SETITEM + STOP
        value = sl.open(torch_zip(tmp_path / f"{name}.pt", data))[name]
        assert isinstance(value, sl.Pickled), name
        assert not marker.exists(), name
    assert "os.system" in repr(sl.open(str(tmp_path / "setstate.pt"))["setstate"].x)


def test_protocol_4_dotted_names_are_not_attribute_walks(tmp_path):
    marker = tmp_path / "ran"
    for module, dotted in [
        ("collections", "OrderedDict.__init__.__globals__"),
        ("builtins", "dict.__class__.__subclasses__"),
        ("torch", "device.__init__"),
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
        ("builtins", "getattr"),
    ]:
        found = text(module) + text(dotted) + STACK_GLOBAL
        data = PROTO4 + EMPTY_DICT + text("x") + found + text(shell(marker)) + TUPLE1 + REDUCE + SETITEM + STOP
        value = sl.open(torch_zip(tmp_path / "dotted.pt", data))["x"]
        assert value.type_name == f"{module}.{dotted}"
    assert not marker.exists()


def test_extension_codes_resolve_to_placeholders(tmp_path):
    import copyreg

    marker = tmp_path / "ran"
    copyreg.add_extension("os", "system", 0xF0)
    try:
        data = PROTO2 + EMPTY_DICT + text("x") + b"\x82\xf0" + text(shell(marker)) + TUPLE1 + REDUCE + SETITEM + STOP
        assert sl.open(torch_zip(tmp_path / "ext.pt", data))["x"].type_name == "os.system"
    finally:
        copyreg.remove_extension("os", "system", 0xF0)
    assert not marker.exists()


def test_persistent_ids_outside_the_archive_and_placeholder_storage_types(tmp_path):
    def with_pid(storage_type: bytes, key: str) -> bytes:
        pid = MARK + text("storage") + storage_type + text(key) + text("cpu") + b"K\x02" + TUPLE + BINPERSID
        return PROTO2 + EMPTY_DICT + text("w") + pid + SETITEM + STOP

    outside = torch_zip(tmp_path / "outside.pt", with_pid(glob("torch", "FloatStorage"), "../../../etc/passwd"))
    with pytest.raises(sl.SourceError, match="storage record 'archive/data/../../../etc/passwd' is missing"):
        sl.open(outside)
    placeholder = torch_zip(tmp_path / "placeholder.pt", with_pid(glob("evil", "Storage"), "0"), {"0": b"\0" * 8})
    with pytest.raises(sl.SourceError, match="invalid storage reference"):
        sl.open(placeholder)
    not_a_tuple = PROTO2 + EMPTY_DICT + text("w") + text("storage") + BINPERSID + SETITEM + STOP
    with pytest.raises(sl.SourceError, match="unknown persistent id"):
        sl.open(torch_zip(tmp_path / "pid.pt", not_a_tuple))


def test_newobj_on_an_allowed_function_is_refused(tmp_path):
    data = PROTO2 + glob("builtins", "list") + EMPTY_TUPLE + NEWOBJ + STOP
    with pytest.raises(sl.SourceError, match="corrupt"):
        sl.open(torch_zip(tmp_path / "newobj.pt", data))


def test_placeholder_types_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_file, "MAX_PLACEHOLDER_TYPES", 3)
    body = b"".join(glob("m", f"C{i}") + b"0" for i in range(4))  # GLOBAL then POP, four names
    with pytest.raises(sl.SourceError, match="over 3 distinct classes"):
        sl.open(torch_zip(tmp_path / "many.pt", PROTO2 + body + EMPTY_DICT + STOP))


class StorageRef:
    """Stands for a storage record; pickled as torch.save does, through a persistent id."""


def tensor_pickle(numel: int, size: tuple, offset: int = 0) -> bytes:
    """A data.pkl holding one tensor {"w": ...} over storage record '0' of `numel` floats."""
    return pickle_of_one_tensor(("storage", torch.FloatStorage, "0", "cpu", numel), size, offset)


def pickle_of_one_tensor(storage_id: tuple, size: tuple, offset: int) -> bytes:
    """A pickle of {"w": tensor} of `size` (contiguous strides) from `offset` of the storage that
    `storage_id` names, as torch.save pickles it (the zip and the legacy formats differ only there)."""

    class Tensor:
        def __reduce__(self):
            stride = tuple(reversed([1] + [size[-1 - i] for i in range(len(size) - 1)]))
            return torch._utils._rebuild_tensor_v2, (StorageRef(), offset, size, stride, False, None)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return storage_id if isinstance(obj, StorageRef) else None

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


# --- legacy (pre-1.6, non-zip) torch files ------------------------------------------------------

LEGACY_HEADER = b"".join(
    pickle.dumps(value, protocol=2)
    for value in (
        0x1950A86A20F9469CFC6C,  # the magic number
        1001,  # the protocol version
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    )
)


def legacy_file(path, main: bytes, keys=(), storages: bytes = b"", header: bytes = LEGACY_HEADER) -> str:
    """A legacy torch.save file laid out as torch writes it: the three small pickles, the main
    pickle, the list of storage keys, then each storage (an 8-byte element count and its bytes)."""
    path.write_bytes(header + main + pickle.dumps(list(keys), protocol=2) + storages)
    return str(path)


def legacy_storage(values: torch.Tensor) -> bytes:
    return values.numel().to_bytes(8, "little") + values.numpy().tobytes()


def legacy_tensor_pickle(numel: int, size: tuple, offset: int = 0, key: str = "0", view=None) -> bytes:
    """A main pickle {"w": tensor} over legacy storage `key` of `numel` floats, as torch.save writes it."""
    return pickle_of_one_tensor(("storage", torch.FloatStorage, key, "cuda:0", numel, view), size, offset)


def test_crafted_legacy_files_are_what_torch_save_writes(tmp_path):
    path = legacy_file(tmp_path / "good.pt", legacy_tensor_pickle(3, (3,)), ["0"], legacy_storage(torch.arange(3.0)))
    assert torch.equal(torch.load(path, weights_only=True, map_location="cpu")["w"], torch.arange(3.0))
    dst = {"w": torch.zeros(3)}
    assert sl.load(dst, path).ok and torch.equal(dst["w"], torch.arange(3.0))


def test_truncated_legacy_file_at_many_cut_points(tmp_path, state):
    whole = tmp_path / "whole.pt"
    torch.save(state, whole, _use_new_zipfile_serialization=False)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.pt"
    for point in cut_points(len(raw)):
        cut.write_bytes(raw[:point])
        expect_source_error(cut)


def test_legacy_storage_header_claiming_more_than_the_file_holds(tmp_path, state):
    whole = tmp_path / "whole.pt"
    torch.save(state, whole, _use_new_zipfile_serialization=False)
    raw = bytearray(whole.read_bytes())
    last = max(leaf.offset for leaf in sl.open(str(whole)).tensors().values()) - 8  # its header
    count = int.from_bytes(raw[last : last + 8], "little")
    raw[last : last + 8] = (1 << 40).to_bytes(8, "little")
    lying = tmp_path / "lying.pt"
    lying.write_bytes(bytes(raw))
    error, peak = peak_traced(lambda: expect_source_error(lying))
    assert f"header of 1099511627776 elements where the pickle says {count}" in str(error) and peak < 4 << 20
    huge = legacy_file(
        tmp_path / "huge.pt", legacy_tensor_pickle(1 << 40, (1 << 40,)), ["0"], legacy_storage(torch.ones(2))
    )
    error, peak = peak_traced(lambda: expect_source_error(huge, dst={"w": torch.zeros(2)}))
    assert "runs past the end of the file" in str(error) and peak < 4 << 20


def test_legacy_storage_keys_listed_twice_unused_or_missing(tmp_path):
    data = legacy_storage(torch.ones(2))
    twice = legacy_file(tmp_path / "twice.pt", legacy_tensor_pickle(2, (2,)), ["0", "0"], data + data)
    assert "storage '0' is listed twice" in str(expect_source_error(twice, dst={"w": torch.zeros(2)}))
    unused = legacy_file(tmp_path / "unused.pt", legacy_tensor_pickle(2, (2,)), ["0", "1"], data + data)
    assert "storage '1' is listed, but no tensor uses it" in str(expect_source_error(unused, dst={"w": torch.zeros(2)}))
    missing = legacy_file(tmp_path / "missing.pt", legacy_tensor_pickle(2, (2,)), [], data)
    assert "not stored in the file" in str(expect_source_error(missing, dst={"w": torch.zeros(2)}))
    not_keys = legacy_file(tmp_path / "keys.pt", legacy_tensor_pickle(2, (2,)), [0], data)
    assert "storage keys" in str(expect_source_error(not_keys, dst={"w": torch.zeros(2)}))


def test_legacy_storage_references_and_views_are_validated(tmp_path):
    data = legacy_storage(torch.arange(4.0))
    view = legacy_file(tmp_path / "view.pt", legacy_tensor_pickle(4, (2,), view=("v", 2, 2)), ["0"], data)
    assert torch.equal(sl.open(view)["w"].read(), torch.tensor([2.0, 3.0]))  # a storage view of PyTorch < 1.0
    assert torch.equal(torch.load(view, weights_only=True, map_location="cpu")["w"], torch.tensor([2.0, 3.0]))
    past = legacy_file(tmp_path / "past.pt", legacy_tensor_pickle(4, (2,), view=("v", 3, 2)), ["0"], data)
    assert "storage view reaches past the end" in str(expect_source_error(past, dst={"w": torch.zeros(2)}))
    offset = legacy_file(tmp_path / "offset.pt", legacy_tensor_pickle(4, (4,), offset=1), ["0"], data)
    assert "reaches past the end of its storage" in str(expect_source_error(offset, dst={"w": torch.zeros(4)}))
    pid = MARK + text("storage") + glob("evil", "Storage") + text("0") + text("cpu") + b"K\x04" + NONE + TUPLE
    placeholder = legacy_file(tmp_path / "type.pt", PROTO2 + EMPTY_DICT + text("w") + pid + BINPERSID + SETITEM + STOP)
    assert "invalid storage reference" in str(expect_source_error(placeholder, dst={}))
    zip_style = MARK + text("storage") + glob("torch", "FloatStorage") + text("0") + text("cpu") + b"K\x04" + TUPLE
    unknown = legacy_file(tmp_path / "pid.pt", PROTO2 + EMPTY_DICT + text("w") + zip_style + BINPERSID + SETITEM + STOP)
    assert "unknown persistent id" in str(expect_source_error(unknown, dst={}))


@pytest.mark.parametrize(("module", "name"), [d for d in DANGEROUS if d != ("torch._utils", "_rebuild_tensor")])
def test_a_legacy_pickle_that_calls_code_runs_nothing(tmp_path, module, name):
    marker = tmp_path / "ran"
    path = legacy_file(tmp_path / "evil.pt", global_call(module, name, payload_for(name, marker)))
    error = expect_inert(path, marker, python3_name(module, name), "not imported or run")
    assert str(path) in str(error) and "\n" not in str(error)
    call = glob(module, name) + text(payload_for(name, marker)) + TUPLE1 + REDUCE
    inside = legacy_file(tmp_path / "inside.pt", PROTO2 + EMPTY_DICT + text("hook") + call + SETITEM + STOP)
    assert sl.open(inside)["hook"].type_name == python3_name(module, name)
    expect_inert(inside, marker, "hook: unexpected in source")


def test_legacy_header_pickles_and_older_rebuilds_run_nothing(tmp_path):
    marker = tmp_path / "ran"
    magic, version = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2)
    evil = global_call("os", "system", shell(marker))
    path = legacy_file(tmp_path / "sysinfo.pt", PROTO2 + EMPTY_DICT + STOP, header=magic + version + evil)
    assert "a header pickle names 'os'.'system'" in str(expect_source_error(path, dst={}))
    keys = tmp_path / "keys.pt"  # the storage keys' pickle, after the main one
    keys.write_bytes(LEGACY_HEADER + PROTO2 + EMPTY_DICT + STOP + evil)
    assert "a header pickle names" in str(expect_source_error(keys, dst={}))
    rebuild = legacy_file(tmp_path / "v1.pt", global_call("torch._utils", "_rebuild_tensor", shell(marker)))
    assert "corrupt" in str(expect_source_error(rebuild, dst={}))  # the PyTorch 0.3 rebuild, on a string
    assert not marker.exists()


def test_legacy_pickles_are_bounded(tmp_path, monkeypatch):
    from structload.sources.formats import torch_legacy

    monkeypatch.setattr(torch_legacy, "MAX_PICKLE_BYTES", 1 << 20)
    big = PROTO2 + EMPTY_DICT + text("x") + text("y" * (2 << 20)) + SETITEM + STOP
    error, peak = peak_traced(lambda: expect_source_error(legacy_file(tmp_path / "big.pt", big), dst={}))
    assert "over the 1048576-byte limit" in str(error) and peak < 8 << 20
    declared = PROTO2 + b"\x8e" + (1 << 50).to_bytes(8, "little") + b"abc" + STOP  # BINBYTES8 of 1 PiB
    error, peak = peak_traced(lambda: expect_source_error(legacy_file(tmp_path / "declared.pt", declared), dst={}))
    assert "corrupt" in str(error) and peak < 8 << 20


def test_legacy_header_values_are_checked(tmp_path):
    magic, version = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2)
    big_endian = magic + version + pickle.dumps({"little_endian": False}, protocol=2)
    path = legacy_file(tmp_path / "big.pt", PROTO2 + EMPTY_DICT + STOP, header=big_endian)
    assert "big-endian" in str(expect_source_error(path, dst={}))
    other = magic + pickle.dumps(1002, protocol=2) + pickle.dumps({}, protocol=2)
    path = legacy_file(tmp_path / "version.pt", PROTO2 + EMPTY_DICT + STOP, header=other)
    assert "protocol version 1002" in str(expect_source_error(path, dst={}))
    path = legacy_file(tmp_path / "magic.pt", PROTO2 + EMPTY_DICT + STOP, header=pickle.dumps(12345, protocol=2))
    assert "not a torch.save file" in str(expect_source_error(path, dst={}))


def test_tar_format_torch_file_is_refused_with_a_way_out(tmp_path):
    import tarfile

    path = tmp_path / "ancient.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        for name in ("storages", "tensors", "pickle"):
            data = pickle.dumps(0)
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    assert "tar-format torch.save file" in str(expect_source_error(path, dst={}))


def test_a_huge_memo_index_is_refused_before_the_unpickler_allocates_for_it(tmp_path):
    def memo_bomb(index: int) -> bytes:  # LONG_BINPUT `index`: the C unpickler zero-fills 16 * index bytes
        return PROTO2 + EMPTY_DICT + b"r" + index.to_bytes(4, "little") + STOP

    _, peak = peak_traced(lambda: pickle.loads(memo_bomb(1 << 22)))
    assert peak > 64 << 20  # the bomb is real: 20 bytes of pickle, 64 MiB of memo
    bomb = memo_bomb(1 << 25)  # 512 MiB (2**31 - 1 would be 32 GiB: the process, or its neighbours, killed)
    put = PROTO2 + EMPTY_DICT + b"p33554432\n" + STOP  # the same with protocol 0's PUT
    magic, version = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2)
    files = {
        "zip.pt": torch_zip(tmp_path / "zip.pt", bomb),
        "zip_put.pt": torch_zip(tmp_path / "zip_put.pt", put),
        "legacy.pt": legacy_file(tmp_path / "legacy.pt", bomb),
        "legacy_header.pt": legacy_file(tmp_path / "legacy_header.pt", bomb, header=magic + version + put),
    }
    for name, path in files.items():
        error, peak = peak_traced(lambda path=path: expect_source_error(path, dst={}))
        assert "memo index 33554432" in str(error) and peak < 16 << 20, name
    for name in ("first_bytes.bin", "first_bytes"):  # told apart by their first bytes: never unpickled whole
        (tmp_path / name).write_bytes(bomb)
        _, peak = peak_traced(lambda name=name: expect_source_error(tmp_path / name, dst={}))
        assert peak < 16 << 20, name


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


def test_safetensors_header_length_past_the_end_names_the_bytes_after_the_prefix(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes((16).to_bytes(8, "little") + b"{}" + b"\0" * 8)  # 18 bytes: 10 after the prefix
    assert "header length 16 exceeds the 10 bytes after the length prefix" in str(expect_source_error(path))
