"""Files that change under a load, special files, concurrent loads, interrupts, and what loads leave behind.

Every change here is made the way an operator makes it: ``os.replace`` of a
new download over the path, a file rewritten in place, a file cut short.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, assert_unchanged, randomized, snapshot
from structload.sources._io import local as _local


def save(path, state: dict, fmt: str) -> str:
    """`state` written as `fmt` by the format's own library, as a user does."""
    path = str(path)
    if fmt == "safetensors":
        safetensors.torch.save_file(state, path)
    elif fmt == "pt":
        torch.save(state, path)
    else:  # a compressed numpy archive: read through zipfile
        np.savez_compressed(path, **{k: v.numpy() for k, v in state.items()})
    return path


def rewrite_in_place(path: str, data: bytes) -> None:
    """New bytes into the same file (same inode, same size), as ``open(path, "r+b")`` does."""
    before = os.stat(path).st_mtime_ns
    time.sleep(0.02)  # a later write has a later modification time
    with open(path, "r+b") as f:
        f.write(data)
    assert os.stat(path).st_mtime_ns != before


FORMATS = [("safetensors", True), ("safetensors", False), ("pt", True), ("pt", False), ("npz", False)]


@pytest.mark.parametrize(("fmt", "mmap"), FORMATS)
def test_a_file_replaced_after_open_is_an_error_before_anything_is_written(tmp_path, fmt, mmap):
    path = save(tmp_path / f"m.{fmt}", randomized(Net(n=2), 1).state_dict(), fmt)
    other = save(tmp_path / f"other.{fmt}", randomized(Net(n=2), 2).state_dict(), fmt)
    tree = sl.open(path)
    os.replace(other, path)  # a new download moved over the path
    if mmap:
        with sl.init_empty_weights():
            model = Net(n=2)
    else:
        model = randomized(Net(n=2), 3)
    before = snapshot(model) if not mmap else None
    with pytest.raises(sl.SourceError, match="another file was put at its path") as info:
        sl.load(model, tree, mmap=mmap)
    assert path in str(info.value) and "nothing was written" in str(info.value)
    assert info.value.report.loaded == []
    if mmap:
        assert all(t.is_meta for t in model.state_dict().values())
    else:
        assert_unchanged(model, before)


@pytest.mark.parametrize(("fmt", "mmap"), FORMATS)
def test_a_file_rewritten_in_place_after_open_is_an_error(tmp_path, fmt, mmap):
    state = randomized(Net(n=2), 1).state_dict()
    path = save(tmp_path / f"m.{fmt}", state, fmt)
    (tmp_path / "newer").mkdir()  # the same name: a torch file's records are named after it
    newer = save(tmp_path / "newer" / f"m.{fmt}", randomized(Net(n=2), 2).state_dict(), fmt)
    tree = sl.open(path)
    if fmt != "npz":  # same layout, new values: only the bytes and the modification time differ
        assert os.path.getsize(newer) == os.path.getsize(path)
    rewrite_in_place(path, Path(newer).read_bytes()[: os.path.getsize(path)])
    model = randomized(Net(n=2), 3)
    before = snapshot(model)
    with pytest.raises(sl.SourceError, match=r"it was rewritten|its size went") as info:
        sl.load(model, tree, mmap=mmap, strict=False)
    assert path in str(info.value) and info.value.report.loaded == []
    assert_unchanged(model, before)


def test_a_file_rewritten_during_the_load_is_an_error_with_what_was_written(tmp_path):
    state = {"a": torch.ones(64), "b": torch.ones(64)}
    path = save(tmp_path / "m.safetensors", state, "safetensors")
    tree = sl.open(path)
    original = _local.LocalFile.read_into

    def rewrite_after_the_first_read(handle, buffer, offset):
        original(handle, buffer, offset)
        if os.stat(path).st_size == handle.size and not rewritten:
            rewritten.append(True)
            data = Path(path).read_bytes()
            rewrite_in_place(path, data[:-4] + b"\x00\x00\x00\x00")

    rewritten: list[bool] = []
    dst = {"a": torch.zeros(64), "b": torch.zeros(64)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_local.LocalFile, "read_into", rewrite_after_the_first_read)
        with pytest.raises(sl.SourceError, match="it was rewritten.*every tensor was written.*load again") as info:
            sl.load(dst, tree)
    assert path in str(info.value) and info.value.report.loaded == ["a", "b"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_dcp_checkpoint_saved_again_after_open_is_an_error(tmp_path):
    import torch.distributed.checkpoint as dcp

    folder = str(tmp_path / "dcp")
    dcp.save(dict(randomized(Net(n=2), 1).state_dict()), checkpoint_id=folder)
    tree = sl.open(folder)
    time.sleep(0.02)
    dcp.save(dict(randomized(Net(n=2), 2).state_dict()), checkpoint_id=folder)  # DCP's reader opens by path
    model = randomized(Net(n=2), 3)
    before = snapshot(model)
    with pytest.raises(sl.SourceError, match="the DCP checkpoint changed since it was opened") as info:
        sl.load(model, tree)
    assert folder in str(info.value) and "nothing was written" in str(info.value)
    assert_unchanged(model, before)


def test_mapping_checks_the_file_first_and_maps_the_file_that_was_opened(tmp_path):
    path = save(tmp_path / "m.safetensors", {"w": torch.arange(8.0)}, "safetensors")
    leaf = sl.open(path).node["w"]
    os.replace(save(tmp_path / "o.safetensors", {"w": torch.zeros(8)}, "safetensors"), path)
    with pytest.raises(sl.SourceError, match="another file was put at its path"):
        leaf.mmap_view()
    fresh = sl.open(save(tmp_path / "n.safetensors", {"w": torch.arange(8.0)}, "safetensors")).node["w"]
    os.remove(tmp_path / "n.safetensors")  # the path names nothing now: a change too
    with pytest.raises(sl.SourceError, match="its path no longer names a file"):
        fresh.mmap_view()


def open_in_thread(path: str, seconds: float = 10.0):
    """`sl.open(path)` on a thread: what it raised, or a failure if it blocks."""
    outcome: list[BaseException | object] = []

    def attempt():
        try:
            outcome.append(sl.open(path))
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"sl.open({path!r}) blocked"
    return outcome[0]


@pytest.mark.parametrize("name", ["pipe.safetensors", "pipe"])
def test_a_fifo_is_refused_at_open_without_blocking(tmp_path, name):
    path = str(tmp_path / name)
    os.mkfifo(path)  # no writer: a plain open would wait for one forever
    error = open_in_thread(path)
    assert isinstance(error, sl.SourceError) and path in str(error) and "named pipe (FIFO)" in str(error)


def test_a_character_device_is_refused_at_open(tmp_path):
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    error = open_in_thread("/dev/zero")  # reading it would never end
    assert isinstance(error, sl.SourceError) and "/dev/zero: is a character device" in str(error)
    link = tmp_path / "model.safetensors"
    link.symlink_to("/dev/zero")
    assert "is a character device" in str(open_in_thread(str(link)))


def test_two_threads_loading_into_one_model_never_mix_or_tear_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_local, "PARALLEL_BYTES", 4096)  # every tensor read in pieces, by several threads
    monkeypatch.setattr(_local, "PIECE_BYTES", 1024)
    original = _local.LocalFile.read_range

    def slow_read(handle, buffer, offset):  # a slow disk: the two loads overlap for sure
        time.sleep(0.0005)
        return original(handle, buffer, offset)

    monkeypatch.setattr(_local.LocalFile, "read_range", slow_read)
    names = [f"w{i}" for i in range(6)]
    files = [
        save(tmp_path / f"{value}.safetensors", {n: torch.full((4096,), float(value)) for n in names}, "safetensors")
        for value in (1, 2)
    ]
    model = nn.ParameterDict({n: nn.Parameter(torch.zeros(4096)) for n in names})
    for _ in range(3):
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def load(path: str, start=start, errors=errors):
            start.wait()
            try:
                sl.load(model, path)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=load, args=(p,)) for p in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        last = float(model["w0"][0].detach())
        assert last in (1.0, 2.0)  # every tensor whole, all from one file: the load that ran second
        assert all(torch.equal(p, torch.full_like(p, last)) for p in model.values())


def test_an_interrupt_while_planning_says_nothing_was_written():
    model = randomized(Net(n=2), 1)
    before = snapshot(model)

    def interrupt(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        sl.load(model, randomized(Net(n=2), 2).state_dict(), rename=interrupt)
    assert info.value.__notes__ == [
        "structload: the load was interrupted before writing anything; the destination is unchanged"
    ]
    assert_unchanged(model, before)


def test_an_interrupt_while_reading_a_file_names_the_tensor_it_may_have_torn(tmp_path, monkeypatch):
    path = save(tmp_path / "m.safetensors", {"a": torch.ones(8), "b": torch.ones(8)}, "safetensors")
    tree = sl.open(path)
    b_offset = tree.node["b"].offset
    original = _local.LocalFile.read_range

    def interrupted(handle, buffer, offset):
        if offset == b_offset:
            raise KeyboardInterrupt  # Ctrl-C between two pieces of the read into 'b'
        return original(handle, buffer, offset)

    monkeypatch.setattr(_local.LocalFile, "read_range", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        sl.load({"a": torch.zeros(8), "b": torch.zeros(8)}, tree)
    assert info.value.__notes__ == [
        "structload: the load was interrupted after writing 1 of 2 tensors; the last was 'a'; "
        "'b' may be partly written; the destination is partly loaded"
    ]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def write_each_format(folder) -> dict[str, str]:
    state = randomized(Net(n=2), 1).state_dict()
    paths = {fmt: save(folder / f"m.{fmt}", state, fmt) for fmt in ("safetensors", "pt", "npz")}
    paths["npz-stored"] = str(folder / "s.npz")
    np.savez(paths["npz-stored"], **{k: v.numpy() for k, v in state.items()})
    names, weight_map = list(state), {}
    for i in range(2):  # a sharded checkpoint as transformers writes it: an index and its shards
        shard = {k: state[k] for k in names[i::2]}
        safetensors.torch.save_file(shard, str(folder / f"shard{i}.safetensors"))
        weight_map.update(dict.fromkeys(shard, f"shard{i}.safetensors"))
    paths["sharded"] = str(folder / "model.safetensors.index.json")
    Path(paths["sharded"]).write_text(json.dumps({"weight_map": weight_map}))
    return paths


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_loads_of_every_format_leave_no_reference_cycles(tmp_path):
    paths = write_each_format(tmp_path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(Path(paths["pt"]).read_bytes()[:-100])
    cases = [(p, {}) for p in paths.values()] + [(paths["safetensors"], {"mmap": True}), (str(broken), {})]
    for path, options in cases:
        for _ in range(3):  # warm: imports, caches, the reader threads
            _attempt(path, options)
        gc.collect()
        gc.disable()  # whatever a load leaves in a cycle stays, and is counted
        try:
            descriptors = open_descriptors()
            for _ in range(25):
                _attempt(path, options)
            leaked = open_descriptors() - descriptors, gc.collect()  # collect() counts the unreachable
        finally:
            gc.enable()
        assert leaked == (0, 0), f"{path} {options}: {leaked[0]} descriptors open, {leaked[1]} objects in cycles"


def _attempt(path: str, options: dict) -> None:
    model = Net(n=2)
    if options.get("mmap"):
        with sl.init_empty_weights():
            model = Net(n=2)
    with contextlib.suppress(sl.SourceError):  # the broken file's loads fail: what they leave counts too
        sl.load(model, path, **options)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_three_hundred_torch_file_loads_hold_descriptors_and_memory_flat(tmp_path):
    path = write_each_format(tmp_path)["pt"]
    model = Net(n=2)
    sl.load(model, path)
    gc.collect()
    descriptors, objects = open_descriptors(), len(gc.get_objects())
    for _ in range(300):
        sl.load(model, path)
    assert open_descriptors() == descriptors
    assert len(gc.get_objects()) - objects < 100  # nothing kept, nothing waiting for the collector


def test_the_collector_is_resumed_when_the_last_of_concurrent_loads_ends(tmp_path):
    path = write_each_format(tmp_path)["safetensors"]
    assert gc.isenabled()
    threads = [threading.Thread(target=lambda: [sl.load(Net(n=2), path) for _ in range(20)]) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()
