"""File sources: safetensors, torch.save files, sharded checkpoints; laziness and bad input."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, TiedLM, assert_same_state, assert_unchanged, randomized, snapshot
from structload.sources import iter_leaves
from structload.sources._io import casting as _casting
from structload.sources._io import file_tensor as _file_tensor
from structload.sources._io import local as _local


@pytest.fixture
def source():
    return randomized(Net(n=3), 1)


def save_safetensors(path, state):
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def save_sharded(directory, state, shards: int = 3, fmt: str = "safetensors"):
    """A Hugging Face style sharded checkpoint: shard files plus an index."""
    names = list(state)
    weight_map, per = {}, -(-len(names) // shards)
    for i in range(shards):
        part = {k: state[k].contiguous() for k in names[i * per : (i + 1) * per]}
        filename = f"model-{i + 1:05d}-of-{shards:05d}.{fmt}"
        if fmt == "safetensors":
            safetensors.torch.save_file(part, str(directory / filename))
        else:
            torch.save(part, directory / filename)
        weight_map.update(dict.fromkeys(part, filename))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return str(directory / index)


class ReadLog:
    """Records every byte range read from files."""

    def __init__(self, monkeypatch):
        self.ranges: list[tuple[str, int, int]] = []
        original = _local.LocalFile.read_into

        def logged(handle, buffer, offset):
            self.ranges.append((handle.path, offset, len(buffer)))
            return original(handle, buffer, offset)

        monkeypatch.setattr(_local.LocalFile, "read_into", logged)

    def bytes_read(self) -> int:
        return sum(n for _, _, n in self.ranges)


# --- every format loads, values checked against the source --------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "pth", "bin"])
def test_each_file_format_loads_values(tmp_path, source, fmt):
    path = tmp_path / f"model.{fmt}"
    if fmt == "safetensors":
        save_safetensors(path, source.state_dict())
    else:
        torch.save(source.state_dict(), path)
    dst = randomized(Net(n=3), 2)
    params = dict(dst.named_parameters())
    report = sl.load(dst, str(path))
    assert report.ok
    assert_same_state(dst, source)
    assert all(p is params[name] for name, p in dst.named_parameters())


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints_by_index_and_by_directory(tmp_path, source, fmt):
    index = save_sharded(tmp_path, source.state_dict(), fmt=fmt)
    for target in (index, str(tmp_path), tmp_path):
        dst = Net(n=3)
        assert sl.load(dst, target).ok
        assert_same_state(dst, source)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_meta_destination_from_file_is_materialized(tmp_path, source, fmt):
    path = tmp_path / f"m.{fmt}"
    save_safetensors(path, source.state_dict()) if fmt == "safetensors" else torch.save(source.state_dict(), path)
    with torch.device("meta"):
        dst = Net(n=3)
    dst.head.weight.requires_grad_(False)
    sl.load(dst, str(path), device="cpu")
    assert_same_state(dst, source)
    assert all(type(p) is nn.Parameter and not p.is_meta for p in dst.parameters())
    assert dst.head.weight.requires_grad is False and dst.embed.weight.requires_grad is True


def test_casts_from_file_go_through_bounded_chunks(tmp_path, source, monkeypatch):
    monkeypatch.setattr(_casting, "CHUNK_BYTES", 64)  # many chunks per tensor
    state = {k: v.half() for k, v in source.state_dict().items()}
    path = save_safetensors(tmp_path / "half.safetensors", state)
    dst = Net(n=3)
    report = sl.load(dst, path)
    assert len(report.cast) == len(state)
    assert all(torch.equal(dst.state_dict()[k], v.float()) for k, v in state.items())


def test_torch_file_views_and_shared_storages(tmp_path):
    base = torch.arange(12.0)
    torch.save({"a": base[2:8].view(2, 3), "b": base.view(3, 4).t(), "c": base}, tmp_path / "views.pt")
    dst = {"a": torch.zeros(2, 3), "b": torch.zeros(4, 3), "c": torch.zeros(12)}
    assert sl.load(dst, str(tmp_path / "views.pt")).ok
    assert torch.equal(dst["a"], base[2:8].view(2, 3)) and torch.equal(dst["b"], base.view(3, 4).t())


def test_torch_file_dtypes_round_trip(tmp_path):
    values = {
        "bf16": torch.randn(3).bfloat16(),
        "f8": torch.randn(3).to(torch.float8_e4m3fn),
        "u16": torch.tensor([1, 2, 60000], dtype=torch.uint16),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 2),
        "scalar": torch.tensor(5),
    }
    torch.save(values, tmp_path / "dtypes.pt")
    dst = {k: torch.zeros_like(v) for k, v in values.items()}
    assert sl.load(dst, str(tmp_path / "dtypes.pt")).ok
    for key, value in values.items():
        assert torch.equal(
            dst[key].view(torch.uint8) if key == "f8" else dst[key], value.view(torch.uint8) if key == "f8" else value
        )


def test_tied_model_checkpoint_from_file(tmp_path):
    src = randomized(TiedLM(), 1)
    torch.save(src.state_dict(), tmp_path / "tied.pt")
    dst = TiedLM()
    assert sl.load(dst, str(tmp_path / "tied.pt")).ok
    assert dst.lm_head.weight is dst.wte.weight and torch.equal(dst.wte.weight, src.wte.weight)


# --- training checkpoints: load part of a file -------------------------------------------


@pytest.fixture
def training_checkpoint(tmp_path, source):
    optimizer = torch.optim.Adam(source.parameters())
    for p in source.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    path = tmp_path / "train.pt"
    torch.save({"model": source.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    return str(path)


def test_open_picks_a_subtree_of_a_training_checkpoint(training_checkpoint, source):
    checkpoint = sl.open(training_checkpoint)
    assert list(checkpoint) == ["model", "optimizer", "epoch"]
    assert checkpoint["model"]["head"]["weight"].shape == (3, 4)
    assert checkpoint["model.head.weight"].dtype == torch.float32
    block = Net(n=3).blocks[1]
    assert sl.load(block, checkpoint["model"]["blocks"]["1"]).ok
    assert torch.equal(block.fc1.weight, source.blocks[1].fc1.weight)
    with pytest.raises(KeyError, match="'encoder' is not in .*train.pt .*model, optimizer, epoch"):
        checkpoint["encoder"]
    assert "tensors" in repr(checkpoint["model"])


def test_loading_part_of_a_training_checkpoint_reads_only_that_part(training_checkpoint, source, monkeypatch):
    log = ReadLog(monkeypatch)
    model_part = sl.open(training_checkpoint)["model"]  # reads the pickle and record headers only
    log.ranges.clear()
    dst = Net(n=3)
    report = sl.load(dst, model_part, include="blocks.0")
    assert report.ok and torch.equal(dst.blocks[0].fc2.weight, source.blocks[0].fc2.weight)
    wanted = sum(t.numel() * t.element_size() for t in source.blocks[0].state_dict().values())
    assert log.bytes_read() == wanted  # not a byte of optimizer state or other blocks


def test_excluded_tensors_are_never_read(tmp_path, source, monkeypatch):
    path = save_safetensors(tmp_path / "m.safetensors", source.state_dict())
    log = ReadLog(monkeypatch)
    opened = sl.open(path)
    assert next(n for _, _, n in log.ranges) == 8  # the header length, then the header
    log.ranges.clear()
    sl.load(Net(n=3), opened, exclude="blocks")
    expected = sum(t.numel() * 4 for k, t in source.state_dict().items() if not k.startswith("blocks"))
    assert log.bytes_read() == expected


def test_shards_holding_only_excluded_tensors_are_never_opened(tmp_path, source):
    index = save_sharded(tmp_path, source.state_dict(), shards=3)
    weight_map = json.loads(Path(index).read_text())["weight_map"]
    last = weight_map["head.weight"]
    assert all(v != last for k, v in weight_map.items() if k.startswith("embed"))
    for name in set(weight_map.values()) - {weight_map["embed.weight"]}:
        (tmp_path / name).write_bytes(b"garbage: opening this shard would fail")
    dst = Net(n=3)
    report = sl.load(dst, index, include="embed")
    assert report.ok and torch.equal(dst.embed.weight, source.embed.weight)
    with pytest.raises(sl.SourceError, match="not a valid safetensors file"):
        sl.load(Net(n=3), index)


def test_inspect_reads_metadata_only(tmp_path, source, monkeypatch):
    st = save_safetensors(tmp_path / "m.safetensors", source.state_dict())
    torch.save(source.state_dict(), tmp_path / "m.pt")
    log = ReadLog(monkeypatch)
    info = sl.inspect(st)
    assert info["blocks.2.fc1.weight"].shape == (8, 4) and info["head.bias"].nbytes == 12
    assert log.bytes_read() < 2000
    log.ranges.clear()
    info = sl.inspect(str(tmp_path / "m.pt"))
    assert info["blocks.2.fc1.weight"].dtype == torch.float32
    assert log.bytes_read() < 1000  # local zip headers only


def test_diff_between_files(tmp_path, source):
    a = save_safetensors(tmp_path / "a.safetensors", source.state_dict())
    changed = source.state_dict()
    changed["head.bias"] = changed["head.bias"] + 1
    torch.save(changed, tmp_path / "b.pt")
    assert sl.diff(a, str(tmp_path / "b.pt")).ok
    assert sl.diff(a, str(tmp_path / "b.pt"), values=True).values == ["head.bias"]


def test_progress_bar_for_file_loads(tmp_path, source, monkeypatch):
    import io

    from rich.console import Console

    stream = io.StringIO()
    monkeypatch.setattr("structload._render.progress.Console", lambda stderr: Console(file=stream, force_terminal=True))
    path = save_safetensors(tmp_path / "m.safetensors", source.state_dict())
    sl.load(Net(n=3), path, progress=True)
    assert "loading Net" in stream.getvalue()


# --- bad input: a SourceError naming the file, dst untouched ------------------------------


def corrupt_safetensors(tmp_path, source, edit) -> str:
    path = save_safetensors(tmp_path / "bad.safetensors", source.state_dict())
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    raw = edit(raw, header, n)
    Path(path).write_bytes(raw)
    return path


def with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


BAD_SAFETENSORS = {
    "truncated": (lambda raw, h, n: raw[: len(raw) - 10], "beyond the"),
    "cut inside header": (lambda raw, h, n: raw[: 8 + n // 2], "header length"),
    "huge header length": (lambda raw, h, n: (10**12).to_bytes(8, "little") + raw[8:], "header length"),
    "invalid json": (lambda raw, h, n: raw[:8] + b"{" * n + raw[8 + n :], "not valid JSON"),
    "not an object": (lambda raw, h, n: with_header([], b""), "not a JSON object"),
    "unknown dtype": (
        lambda raw, h, n: with_header({**h, "head.bias": {**h["head.bias"], "dtype": "F128"}}, raw[8 + n :]),
        "unknown dtype",
    ),
    "byte count": (
        lambda raw, h, n: with_header({**h, "head.bias": {**h["head.bias"], "shape": [4]}}, raw[8 + n :]),
        "bytes for shape",
    ),
    "bad shape": (
        lambda raw, h, n: with_header({**h, "head.bias": {**h["head.bias"], "shape": [-3]}}, raw[8 + n :]),
        "invalid shape",
    ),
    "overlap": (
        lambda raw, h, n: with_header(
            {
                **h,
                "head.weight": {
                    **h["head.weight"],
                    "data_offsets": [0, h["head.weight"]["data_offsets"][1] - h["head.weight"]["data_offsets"][0]],
                },
            },
            raw[8 + n :],
        ),
        "overlap",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_bad_safetensors_is_a_source_error_naming_the_file(tmp_path, source, case):
    edit, expected = BAD_SAFETENSORS[case]
    path = corrupt_safetensors(tmp_path, source, edit)
    dst = randomized(Net(n=3), 5)
    before = snapshot(dst)
    with pytest.raises(sl.SourceError) as info:
        sl.load(dst, path)
    assert str(info.value).startswith(path) and expected in str(info.value)
    assert_unchanged(dst, before)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_file_with_a_code_payload_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2, 2), "payload": Exploit(marker)}, path)
    dst = nn.Linear(2, 2, bias=False)
    before = snapshot(dst)
    with pytest.raises(sl.LoadError) as info:
        sl.load(dst, str(path))
    message = str(info.value)
    assert "payload: unexpected in source (what the pickle makes with posix.system, which was not imported" in message
    assert not marker.exists()
    assert_unchanged(dst, before)
    sl.load(dst, str(path), rename={"^payload$": None})
    assert torch.equal(dst.weight, torch.ones(2, 2)) and not marker.exists()


def test_torch_file_with_a_pickled_module_inside(tmp_path):
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")
    assert list(sl.inspect(str(tmp_path / "pickled_module.pt"))) == ["model.weight", "model.bias"]
    assert sl.open(str(tmp_path / "pickled_module.pt")).types == {"model": "torch.nn.modules.linear.Linear"}


def test_legacy_torch_file_loads_like_a_zip_one(tmp_path):  # it was refused before issue 23; see test_legacy.py
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(1)}, path, _use_new_zipfile_serialization=False)
    dst = {"w": torch.zeros(1)}
    assert sl.load(dst, str(path)).ok and torch.equal(dst["w"], torch.ones(1))


def test_torch_file_missing_a_storage_record(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if not item.filename.endswith("data/0"):
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(sl.SourceError, match="storage record .* is missing"):
        sl.load({"w": torch.zeros(3)}, str(bad))


def test_truncated_torch_file(tmp_path, source):
    path = tmp_path / "cut.pt"
    torch.save(source.state_dict(), path)
    raw = path.read_bytes()
    for cut in (0, 3, len(raw) // 2, len(raw) - 30):
        path.write_bytes(raw[:cut])
        with pytest.raises(sl.SourceError) as info:
            sl.load(Net(n=3), str(path))
        assert str(path) in str(info.value)


def test_pickle_bomb_of_unknown_opcodes_is_a_source_error(tmp_path):
    path = tmp_path / "noise.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("noise/data.pkl", b"\x80\x02\xff\xfe garbage")
    with pytest.raises(sl.SourceError, match="pickle data is corrupt"):
        sl.load({}, str(path))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "nothing.safetensors", "no such file"),
        (lambda d: (d / "weights.xyz").write_bytes(b"\x00" * 64) and d / "weights.xyz", "unknown checkpoint format"),
        (lambda d: (d / "empty.pt").write_bytes(b"") or d / "empty.pt", "empty"),
        (lambda d: (d / "empty.safetensors").write_bytes(b"") or d / "empty.safetensors", "too short"),
        (lambda d: (d / "sub").mkdir() or d / "sub", "no checkpoint structload can pick"),
    ],
)
def test_unusable_paths(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(sl.SourceError) as info:
        sl.load(nn.Linear(2, 2), str(path))
    assert str(path) in str(info.value) and expected in str(info.value)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.safetensors"
    path.write_bytes(b"x" * 64)
    real_open = os.open

    def refuse(name, *args, **kwargs):  # as a file without read permission does (root reads anything)
        if os.fspath(name) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(sl.SourceError) as info:
        sl.load(nn.Linear(2, 2), str(path))
    assert str(info.value) == f"{path}: cannot open (Permission denied)"


def test_sharded_index_problems(tmp_path, source):
    index = save_sharded(tmp_path, source.state_dict())
    data = json.loads(Path(index).read_text())
    (tmp_path / "missing.index.json").write_text(
        json.dumps({"weight_map": {**data["weight_map"], "x": "nope.safetensors"}})
    )
    with pytest.raises(sl.SourceError, match="shard 'nope.safetensors' .* does not exist"):
        sl.load(Net(n=3), str(tmp_path / "missing.index.json"))
    text = json.dumps(data).replace(
        '"embed.weight"', '"head.bias": "model-00001-of-00003.safetensors", "embed.weight"', 1
    )
    (tmp_path / "twice.index.json").write_text(text)
    with pytest.raises(sl.SourceError, match="'head.bias' is listed twice"):
        sl.load(Net(n=3), str(tmp_path / "twice.index.json"))
    (tmp_path / "lying.index.json").write_text(
        json.dumps({"weight_map": {**data["weight_map"], "head.bias": "model-00001-of-00003.safetensors"}})
    )
    with pytest.raises(sl.SourceError, match="puts 'head.bias' in .*00001.* which does not hold it"):
        sl.load(Net(n=3), str(tmp_path / "lying.index.json"))
    (tmp_path / "escape.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    with pytest.raises(sl.SourceError, match="outside the index's directory"):
        sl.load(Net(n=3), str(tmp_path / "escape.index.json"))


def test_file_shrinking_between_planning_and_writing_reports_what_was_written(tmp_path, source):
    path = save_safetensors(tmp_path / "m.safetensors", source.state_dict())
    opened = sl.open(path)  # header read now
    size = os.path.getsize(path)
    last = source.state_dict()["head.bias"].numel() * 4 + source.state_dict()["head.weight"].numel() * 4
    head_offset = opened.node["head"]["weight"].offset
    original = _local.LocalFile.read_into

    def cut_before_the_head(handle, buffer, offset):  # the file shrinks while the load is writing
        if offset == head_offset:
            os.truncate(path, size - last)
        return original(handle, buffer, offset)

    dst = Net(n=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_local.LocalFile, "read_into", cut_before_the_head)
        with pytest.raises(sl.SourceError) as info:
            sl.load(dst, opened)
    error = info.value
    assert path in str(error) and "head.weight" in str(error)
    report = error.report
    assert report.loaded == [k for k in source.state_dict() if not k.startswith("head.")]
    assert report.torn == ["head.weight"] and "'head.weight' may be partly written" in str(error)
    assert torch.equal(dst.blocks[2].norm.bias, source.blocks[2].norm.bias)


def test_big_reads_split_into_parallel_pieces_give_the_same_values(tmp_path, monkeypatch):
    monkeypatch.setattr(_local, "PARALLEL_BYTES", 1024)
    monkeypatch.setattr(_local, "PIECE_BYTES", 100)  # uneven pieces
    values = {"w": torch.randn(50, 33), "v": torch.arange(1000, dtype=torch.int64)}
    path = save_safetensors(tmp_path / "big.safetensors", values)
    dst = {"w": torch.zeros(50, 33), "v": torch.zeros(1000, dtype=torch.int64)}
    assert sl.load(dst, path).ok
    assert torch.equal(dst["w"], values["w"]) and torch.equal(dst["v"], values["v"])
    opened = sl.open(path)
    os.truncate(path, os.path.getsize(path) - 10)  # a piece of the last read comes up short
    with pytest.raises(sl.SourceError, match="file ended at byte"):  # read directly: a load says "changed" first
        for _, leaf in iter_leaves(opened.node):
            leaf.read()


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_slices_of_file_tensors_read_exact_blocks(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(_casting, "CHUNK_BYTES", chunk)  # small: exercise the row-by-row and block paths
    monkeypatch.setattr(_file_tensor, "SEGMENT_BYTES", 32)
    values = torch.arange(7 * 6 * 5, dtype=torch.float32).reshape(7, 6, 5)
    path = save_safetensors(tmp_path / "t.safetensors", {"t": values})
    leaf = sl.open(path)["t"]
    for starts, sizes in [
        ((2, 0, 0), (3, 6, 5)),
        ((0, 3, 0), (7, 3, 5)),
        ((1, 2, 1), (5, 3, 3)),
        ((0, 0, 4), (7, 6, 1)),
    ]:
        target = torch.zeros(sizes)
        leaf.read_slice_into(target, starts, sizes)
        index = tuple(slice(a, a + n) for a, n in zip(starts, sizes))
        assert torch.equal(target, values[index]), (starts, sizes)
    log = ReadLog(monkeypatch)
    target = torch.zeros(3, 6, 5)
    leaf.read_slice_into(target, (4, 0, 0), (3, 6, 5))
    assert log.bytes_read() == 3 * 6 * 5 * 4  # a row block: exactly its bytes, one read


def test_parallel_reads_work_in_a_forked_child(tmp_path, monkeypatch):
    import multiprocessing

    monkeypatch.setattr(_local, "PARALLEL_BYTES", 1024)
    monkeypatch.setattr(_local, "PIECE_BYTES", 256)
    values = {"w": torch.randn(64, 64)}
    path = save_safetensors(tmp_path / "w.safetensors", values)
    sl.load({"w": torch.zeros(64, 64)}, path)  # the parent's reader pool now has threads
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_load_in_child, args=(path, str(tmp_path / "ok")))
    child.start()
    child.join(timeout=60)
    if child.is_alive():  # stuck on a pool whose threads the fork did not copy
        child.kill()
    assert child.exitcode == 0 and (tmp_path / "ok").exists()


def _load_in_child(path, marker):
    target = {"w": torch.zeros(64, 64)}
    sl.load(target, path)
    if torch.equal(target["w"], safetensors.torch.load_file(path)["w"]):
        open(marker, "w").close()


def test_numbered_entries_come_in_numeric_order(tmp_path):
    state = {f"h.{i}.w": torch.zeros(1) for i in range(12)}
    path = save_safetensors(tmp_path / "h.safetensors", state)
    assert list(sl.open(path)["h"]) == [str(i) for i in range(12)]
    assert list(sl.inspect(path)) == [f"h.{i}.w" for i in range(12)]


def test_casting_reads_in_overlapped_chunks_give_the_cast_values(tmp_path, monkeypatch):
    from structload.sources._io import casting as _casting

    monkeypatch.setattr(_casting, "CHUNK_BYTES", 64)  # 32 bf16 elements a chunk: every tensor takes many
    state = {"a": torch.randn(37, 11).bfloat16(), "b": torch.randn(5).bfloat16(), "c": torch.randn(300).bfloat16()}
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file(state, str(path))
    dst = {k: torch.zeros(v.shape) for k, v in state.items()}
    report = sl.load(dst, str(path))
    assert [c.path for c in report.cast] == ["a", "b", "c"]
    assert all(torch.equal(dst[k], v.float()) for k, v in state.items())
    with torch.device("meta"):
        model = nn.Linear(11, 37)
    sl.load(model, {"weight": sl.open(str(path))["a"], "bias": torch.zeros(37)})
    assert torch.equal(model.weight, state["a"].float())


def test_a_file_cut_during_an_overlapped_casting_read_is_a_source_error(tmp_path, monkeypatch):
    from structload.sources._io import casting as _casting

    monkeypatch.setattr(_casting, "CHUNK_BYTES", 64)
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"w": torch.randn(1000).bfloat16()}, str(path))
    tree = sl.open(str(path))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 500)
    dst = {"w": torch.zeros(1000)}
    with pytest.raises(sl.SourceError, match="truncated, or changed since it was opened"):
        tree.node["w"].read_into(dst["w"])  # read directly: a load finds the change before reading
    with pytest.raises(sl.SourceError, match="the file changed since it was opened"):
        sl.load(dst, tree)
