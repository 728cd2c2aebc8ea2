"""Remote checkpoints through fsspec: a loopback HTTP server (with faults) and an S3-compatible one.

Every server here listens on 127.0.0.1 only and is started by the tests.
"""

from __future__ import annotations

import builtins
import json
import os
import tracemalloc

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn as nn
from loopback import LoopbackServer
from test_cli import run
from test_distributed import fsdp_model, reference_state, results, run_ranks, save_result

import structload as sl
from helpers import Net, randomized
from structload import _apply
from structload.sources._io import remote as _remote

#: Bytes a load may fetch beyond its tensors and the file's headers (gaps between coalesced ranges).
SMALL_BOUND = 4096


#: every test here: retries without waiting, and `served` (a loopback HTTP server), from conftest.py
pytestmark = pytest.mark.usefixtures("quick_retries")


def header_bytes(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def publish(server: LoopbackServer, name: str, state: dict) -> tuple[str, dict]:
    path = server.root / name
    safetensors.torch.save_file(state, str(path))
    return f"{server.url}/{name}", state


def test_full_load_fetches_only_tensors_and_header(served):
    state = randomized(Net(n=3), 1).state_dict()
    url, _ = publish(served, "net.safetensors", state)
    model = randomized(Net(n=3), 2)
    report = sl.load(model, url)
    assert report.ok and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    tensors = sum(v.numel() * v.element_size() for v in state.values())
    assert tensors <= served.served <= tensors + header_bytes(served.root / "net.safetensors") + SMALL_BOUND


def test_include_load_fetches_only_the_included_tensors(served):
    state = randomized(Net(n=3), 1).state_dict()
    url, _ = publish(served, "net.safetensors", state)
    model = randomized(Net(n=3), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sl.load(model, url, include="blocks.1.*")
    included = {k: v for k, v in state.items() if k.startswith("blocks.1.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in included.items())
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in state if k not in included)
    wanted = sum(v.numel() * v.element_size() for v in included.values())
    assert served.served <= wanted + header_bytes(served.root / "net.safetensors") + SMALL_BOUND


def test_small_adjacent_tensors_are_fetched_together(served):
    state = {f"w{i}": torch.full((4,), float(i)) for i in range(50)}
    url, _ = publish(served, "many.safetensors", state)
    dst = {f"w{i}": torch.zeros(4) for i in range(50)}
    sl.load(dst, url)
    ranged_gets = [r for r in served.requests if r[0] == "GET" and r[2]]
    assert len(ranged_gets) <= 4  # the 8-byte length, the header, then one request for all 50 tensors
    assert all(torch.equal(dst[f"w{i}"], torch.full((4,), float(i))) for i in range(50))


def test_big_tensors_are_fetched_in_parallel_pieces(served, monkeypatch):
    monkeypatch.setattr(_remote, "PIECE_BYTES", 64 << 10)
    state = {"big": torch.randn(256, 1024)}  # 1 MiB: 16 pieces
    url, _ = publish(served, "big.safetensors", state)
    dst = {"big": torch.zeros(256, 1024)}
    sl.load(dst, url)
    assert torch.equal(dst["big"], state["big"])
    assert sum(1 for r in served.requests if r[0] == "GET") >= 16


def test_peak_memory_over_the_model_is_a_small_part_of_the_bytes_loaded(served, monkeypatch):
    monkeypatch.setattr(_remote, "PIECE_BYTES", 256 << 10)
    state = {f"layer{i}": torch.randn(2048, 1024) for i in range(8)}  # 64 MiB
    url, _ = publish(served, "big.safetensors", state)
    dst = {k: torch.zeros(2048, 1024) for k in state}
    sl.load(dst, url, include="layer0")  # imports and connections first: they are not the load's
    tracemalloc.start()
    try:
        sl.load(dst, url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(torch.equal(dst[k], v) for k, v in state.items())
    assert peak < 0.05 * (64 << 20), peak  # the loopback server's own buffers included


def test_torch_npz_and_sharded_files_over_http(served):
    state = randomized(Net(n=2), 1).state_dict()
    torch.save(state, served.root / "net.pt")
    np.savez(served.root / "net.npz", **{k: v.numpy() for k, v in state.items()})
    names = list(state)
    half = len(names) // 2
    shards = {"a.safetensors": names[:half], "b.safetensors": names[half:]}
    (served.root / "sharded").mkdir()
    for shard, keys in shards.items():
        safetensors.torch.save_file({k: state[k] for k in keys}, str(served.root / "sharded" / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (served.root / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for name in ("net.pt", "net.npz", "sharded/model.safetensors.index.json"):
        model = randomized(Net(n=2), 2)
        assert sl.load(model, f"{served.url}/{name}").ok, name
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items()), name


def test_open_inspect_diff_and_check_take_urls(served, tmp_path):
    state = randomized(Net(n=2), 1).state_dict()
    url, _ = publish(served, "net.safetensors", state)
    assert sl.open(url)["head"]["weight"].shape == tuple(state["head.weight"].shape)
    assert sorted(sl.inspect(url)) == sorted(state)
    assert sl.diff(url, state).ok
    assert "head" in run("inspect", url).stdout
    assert run("diff", url, url).returncode == 0
    (tmp_path / "factory.py").write_text("from helpers import Net\ndef build():\n    return Net(n=2)\n")
    tests = os.path.dirname(__file__)
    result = run("check", "factory:build", url, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{tests}"})
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("fault", ["drop", "503", "short"])
def test_transient_failures_are_retried(served, fault):
    state = randomized(Net(n=2), 1).state_dict()
    url, _ = publish(served, "net.safetensors", state)
    served.faults = [fault, fault]
    model = randomized(Net(n=2), 2)
    assert sl.load(model, url).ok
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert served.faults == []


def test_persistent_failures_are_a_source_error_naming_the_url(served):
    state = randomized(Net(n=2), 1).state_dict()
    url, _ = publish(served, "net.safetensors", state)
    served.faults = ["503"] * 50
    model = randomized(Net(n=2), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sl.SourceError) as info:
        sl.load(model, url)
    assert str(info.value).startswith(url) and "503" in str(info.value) and "5 attempts" in str(info.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_missing_url_and_unknown_protocol(served):
    with pytest.raises(sl.SourceError, match="no such file"):
        sl.load({}, f"{served.url}/nothing.safetensors")
    with pytest.raises(sl.SourceError, match="no filesystem for this URL"):
        sl.open("nosuchprotocol://bucket/model.safetensors")


def test_a_file_replaced_mid_load_is_a_source_error_with_what_was_written(served, monkeypatch):
    monkeypatch.setattr(_remote, "WINDOW_PIECES", 0)  # no read ahead: one request per tensor, in order
    monkeypatch.setattr(_remote, "COALESCE_GAP", -1)
    state = {f"w{i}": torch.full((300,), float(i)) for i in range(6)}
    url, _ = publish(served, "net.safetensors", state)
    path = served.root / "net.safetensors"

    def replace():
        safetensors.torch.save_file({k: v + 100 for k, v in state.items()}, str(path))
        os.utime(path, ns=(1, 1))

    served.faults = [None, None, None, None, replace]  # length, header, w0, w1, then the file changes
    dst = {k: torch.zeros(300) for k in state}
    with pytest.raises(sl.SourceError, match="changed during the load") as info:
        sl.load(dst, url)
    written = info.value.report.loaded
    assert written == ["w0", "w1"]
    assert all(torch.equal(dst[k], state[k]) for k in written)
    assert all(not dst[k].any() for k in state if k not in written)


def test_without_fsspec_a_url_says_which_extra_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_fsspec(name, *args, **kwargs):
        if name == "fsspec" or name.startswith("fsspec."):
            raise ImportError("No module named 'fsspec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fsspec)
    with pytest.raises(sl.SourceError, match=r"pip install 'structload\[remote\]'"):
        sl.open("https://example.invalid/model.safetensors")


def test_a_missing_filesystem_package_says_what_to_install(monkeypatch):
    import fsspec

    def missing(url, **options):  # structload passes per-request options (the HTTP timeouts)
        raise ImportError('HTTPFileSystem requires "requests" and "aiohttp" to be installed')

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(sl.SourceError, match=r"aiohttp.*install 'structload\[remote\]' for http"):
        sl.open("https://example.invalid/model.safetensors")


def test_memory_urls(tmp_path):
    import fsspec

    state = {"w": torch.arange(6.0)}
    with fsspec.open("memory://structload/test.safetensors", "wb") as f:
        f.write(safetensors.torch.save(state))
    dst = {"w": torch.zeros(6)}
    assert sl.load(dst, "memory://structload/test.safetensors").ok and torch.equal(dst["w"], state["w"])


def test_progress_bar_counts_bytes_fetched(served, monkeypatch):
    state = randomized(Net(n=2), 1).state_dict()
    url, _ = publish(served, "net.safetensors", state)
    seen: dict = {"advanced": 0}
    real_bar = _apply.progress_bar

    def recording_bar(enabled, total, description):
        seen["description"] = description
        bar = real_bar(False, total, description)

        class Recorder:
            def __enter__(self):
                bar.__enter__()
                return lambda n: seen.__setitem__("advanced", seen["advanced"] + n)

            def __exit__(self, *exc):
                return bar.__exit__(*exc)

        return Recorder()

    monkeypatch.setattr(_apply, "progress_bar", recording_bar)
    before = served.served
    sl.load(randomized(Net(n=2), 2), url, progress=True)
    assert seen["description"] == "fetching Net"
    fetched_for_tensors = served.served - before - header_bytes(served.root / "net.safetensors")
    assert seen["advanced"] == fetched_for_tensors > 0


def test_mmap_falls_back_to_reading_for_urls(served):
    state = {"weight": torch.arange(6.0).view(1, 6)}
    url, _ = publish(served, "w.safetensors", state)
    with torch.device("meta"):
        dst = nn.Linear(6, 1, bias=False)
    report = sl.load(dst, url, mmap=True)  # strict: the meta weight must be written
    assert report.ok and report.loaded == ["weight"] and report.mapped == []
    assert not dst.weight.is_meta and torch.equal(dst.weight, state["weight"])


def _fsdp_from_url(rank, world, url, folder):
    model = fsdp_model(world, seed=4)  # other values than reference_state's
    tree = sl.open(url)
    report = sl.load(model, tree)
    file = next(iter(tree.tensors().values())).file
    values = all(torch.equal(v.full_tensor(), reference_state()[k]) for k, v in model.state_dict().items())
    save_result(folder, rank, {"ok": report.ok, "values": values, "fetched": file.fetched})


def test_fsdp2_ranks_fetch_only_their_blocks(served, tmp_path):
    state = reference_state()
    url, _ = publish(served, "net.safetensors", state)
    run_ranks(_fsdp_from_url, 2, url, tmp_path)
    out = results(tmp_path, 2)
    assert all(r["ok"] and r["values"] for r in out)
    tensors = sum(v.numel() * v.element_size() for v in state.values())
    header = header_bytes(served.root / "net.safetensors")
    assert sum(r["fetched"] for r in out) <= tensors + 2 * header + SMALL_BOUND  # not 2x the tensors
    assert all(r["fetched"] < 0.75 * tensors + header + SMALL_BOUND for r in out)


def test_s3_compatible_server(tmp_path, monkeypatch):
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint, "skip_instance_cache": True})
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="checkpoints")
        state = randomized(Net(n=2), 1).state_dict()
        client.put_object(Bucket="checkpoints", Key="run/net.safetensors", Body=safetensors.torch.save(state))
        model = randomized(Net(n=2), 2)
        assert sl.load(model, "s3://checkpoints/run/net.safetensors").ok
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        partial = randomized(Net(n=2), 3)
        sl.load(partial, "s3://checkpoints/run/net.safetensors", include="head.*")
        assert torch.equal(partial.head.weight, state["head.weight"])
        with pytest.raises(sl.SourceError, match="no such file"):
            sl.open("s3://checkpoints/run/missing.safetensors")
    finally:
        server.stop()


def test_dcp_directory_behind_a_url(tmp_path):
    import torch.distributed.checkpoint as dcp

    state = randomized(Net(n=1), 1).state_dict()
    dcp.save({"model": state, "step": 5}, checkpoint_id=str(tmp_path / "dcp"))
    url = (tmp_path / "dcp").as_uri()  # file://..., read through fsspec and torch's FsspecReader
    model = randomized(Net(n=1), 2)
    assert sl.load(model, sl.open(url)["model"]).ok
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_file_changed_under_a_load_without_etags_is_caught_after_the_writes(monkeypatch):
    import fsspec

    url = "memory://structload/changing.safetensors"
    state = {"a": torch.ones(4), "b": torch.zeros(4)}
    with fsspec.open(url, "wb") as f:
        f.write(safetensors.torch.save(state))
    tree = sl.open(url)
    original = _remote.RemoteFile.fetch

    def fetch_then_change(self, start, end):
        data = original(self, start, end)
        with fsspec.open(url, "wb") as f:  # rewritten, longer, while the load runs
            f.write(safetensors.torch.save({**state, "c": torch.ones(100)}))
        return data

    monkeypatch.setattr(_remote.RemoteFile, "fetch", fetch_then_change)
    dst = {"a": torch.zeros(4), "b": torch.ones(4)}
    with pytest.raises(sl.SourceError, match="changed during the load.*every tensor was written") as info:
        sl.load(dst, tree)
    assert info.value.report.loaded == ["a", "b"]


def test_a_url_without_a_known_suffix_is_read_by_content_without_fetching_it_whole(served):
    state = randomized(Net(n=2), 1).state_dict()
    safetensors.torch.save_file(state, str(served.root / "weights.data"))
    model = randomized(Net(n=2), 2)
    assert sl.load(model, f"{served.url}/weights.data").ok
    tensors = sum(v.numel() * v.element_size() for v in state.values())
    assert served.served <= tensors + header_bytes(served.root / "weights.data") + SMALL_BOUND
    assert not [r for r in served.requests if r[0] == "GET" and not r[2]]  # no GET without a range
