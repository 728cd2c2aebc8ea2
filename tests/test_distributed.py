"""Sharded destinations (DTensor, FSDP2) and DCP sources, with real ranks on CPU (gloo).

Each test spawns its ranks and waits for them with a deadline, so a rank left
waiting in a collective fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import structload as sl
from helpers import attempt

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        fn(rank, world, *args)
        dist.barrier()  # nobody tears down while a peer is still finishing a collective
    finally:
        dist.destroy_process_group()
    # The rank's work is done and its results are written. Skip interpreter finalization: gloo's
    # C++ threads can abort it with SIGABRT ("terminate called without an active exception",
    # see pytorch/pytorch#179291), which would fail a test that passed. A rank that raised never
    # gets here, so no failure is hidden.
    os._exit(0)


def run_ranks(fn, world: int, *args, timeout: float = 120) -> None:
    """Run ``fn(rank, world, *args)`` on `world` spawned ranks; fail if any raises or hangs."""
    context = mp.start_processes(
        _entry, args=(fn, world, free_port(), args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout} s: one is waiting for the others")


def results(folder, world: int) -> list[dict]:
    return [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(world)]


def save_result(folder, rank: int, data: dict) -> None:
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(data))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6)) for _ in range(3))
        self.head = nn.Linear(6, 5)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in Net().state_dict().items()}


_ORIGINAL_READ = None


def count_bytes_read() -> list[int]:
    """Count bytes read from files from now on in this process (the list holds the total)."""
    global _ORIGINAL_READ
    from structload.sources._io import local as _local

    _ORIGINAL_READ = _ORIGINAL_READ or _local.LocalFile.read_into
    original, total = _ORIGINAL_READ, [0]

    def counting(handle, buffer, offset):
        total[0] += len(buffer)
        return original(handle, buffer, offset)

    _local.LocalFile.read_into = counting
    return total


# --- hand-made DTensor models: Shard(0), Shard(1), Replicate ---------------------------------


PLACEMENTS = ("shard0", "shard1", "replicate")


def _distributed_linear(rank, world, path, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    opened = sl.open(path)  # the header; what follows is tensor data only
    expected = safetensors.torch.load_file(path)
    outcome = {}
    for name in PLACEMENTS:
        placement = {"shard0": Shard(0), "shard1": Shard(1), "replicate": Replicate()}[name]
        model = nn.Linear(8, 12)
        for param_name, param in list(model.named_parameters()):
            where = Shard(0) if name == "shard1" and param.dim() == 1 else placement
            setattr(model, param_name, nn.Parameter(distribute_tensor(torch.zeros_like(param), mesh, [where])))
        read = count_bytes_read()
        report = sl.load(model, opened)
        same = all(torch.equal(model.get_parameter(k).full_tensor(), v) for k, v in expected.items())
        outcome[name] = {"ok": report.ok, "same": same, "loaded": report.loaded, "read": read[0]}
    save_result(folder, rank, outcome)


@pytest.mark.parametrize("world", [2, 4])
def test_dtensor_placements_load_the_unsharded_values(tmp_path, world):
    torch.manual_seed(1)
    source = nn.Linear(8, 12)
    path = str(tmp_path / "linear.safetensors")
    safetensors.torch.save_file(source.state_dict(), path)
    run_ranks(_distributed_linear, world, path, tmp_path)
    out = results(tmp_path, world)
    for name in PLACEMENTS:
        assert all(r[name]["ok"] and r[name]["same"] and r[name]["loaded"] == ["weight", "bias"] for r in out), name
    full = 12 * 8 * 4 + 12 * 4
    assert [r["shard0"]["read"] for r in out] == [full // world] * world  # each rank reads only its rows
    assert all(r["replicate"]["read"] == full for r in out)


def _two_d_mesh(rank, world, path, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2, 2))
    tree = {"w": distribute_tensor(torch.zeros(8, 6), mesh, [Shard(0), Shard(1)])}
    opened = sl.open(path)
    read = count_bytes_read()
    sl.load(tree, opened)
    expected = safetensors.torch.load_file(path)["w"]
    save_result(folder, rank, {"same": torch.equal(tree["w"].full_tensor(), expected), "read": read[0]})


def test_two_dimensional_mesh(tmp_path):
    path = str(tmp_path / "w.safetensors")
    safetensors.torch.save_file({"w": torch.randn(8, 6)}, path)
    run_ranks(_two_d_mesh, 4, path, tmp_path)
    out = results(tmp_path, 4)
    assert all(r["same"] for r in out)
    assert all(r["read"] < 8 * 6 * 4 for r in out)  # no rank reads the whole tensor


# --- FSDP2 --------------------------------------------------------------------------------------


def _fsdp(rank, world, path, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    reference = Net()
    sl.load(reference, path)
    idx = torch.tensor([[1, 2, 3, 4]])
    outcome = {}
    for on_meta in (False, True):
        with torch.device("meta" if on_meta else "cpu"):
            model = Net()
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if on_meta:
            with pytest.raises(sl.LoadError, match="call model.to_empty"):
                sl.load(model, path)
            model.to_empty(device="cpu")
        params = {name: id(p) for name, p in model.named_parameters()}
        report = sl.load(model, path)
        with torch.no_grad():
            same_output = torch.allclose(model(idx), reference(idx), atol=1e-6)
        same_values = all(
            torch.equal(v.full_tensor(), reference.state_dict()[k]) for k, v in model.state_dict().items()
        )
        kept = params == {name: id(p) for name, p in model.named_parameters()}
        outcome["meta" if on_meta else "real"] = {
            "ok": report.ok,
            "output": same_output,
            "values": same_values,
            "kept": kept,
        }
    save_result(folder, rank, outcome)


def test_fsdp2_fully_sharded_model(tmp_path):
    path = str(tmp_path / "net.safetensors")
    safetensors.torch.save_file(reference_state(), path)
    run_ranks(_fsdp, 2, path, tmp_path)
    expected = {"ok": True, "output": True, "values": True, "kept": True}
    assert all(r == {"real": expected, "meta": expected} for r in results(tmp_path, 2))


# --- every rank reaches the same verdict ----------------------------------------------------------


def _failing(rank, world, sources, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    model = nn.Linear(8, 12)
    for name, param in list(model.named_parameters()):
        setattr(model, name, nn.Parameter(distribute_tensor(torch.full_like(param, 7.0), mesh, [Shard(0)])))
    _, error = attempt(lambda: sl.load(model, sources[rank]))
    message = None if error is None else f"{type(error).__name__}: {error}"
    unchanged = all(bool((p.to_local() == 7).all()) for p in model.parameters())
    dist.barrier()  # a later collective: reached only if no rank is stuck
    save_result(folder, rank, {"error": message, "unchanged": unchanged})


def test_shape_mismatch_raises_the_same_error_on_every_rank(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    safetensors.torch.save_file({"weight": torch.randn(12, 9), "bias": torch.randn(12)}, path)
    run_ranks(_failing, 2, [path, path], tmp_path, timeout=90)
    out = results(tmp_path, 2)
    assert (
        out[0]["error"]
        == out[1]["error"]
        == (
            "LoadError: 1 problem loading into Linear (1 shape)\n  weight: shape (12, 8) in destination, (12, 9) in source"
        )
    )
    assert all(r["unchanged"] for r in out)


def test_one_ranks_unreadable_source_fails_every_rank(tmp_path):
    good = str(tmp_path / "good.safetensors")
    safetensors.torch.save_file({"weight": torch.randn(12, 8), "bias": torch.randn(12)}, good)
    missing = str(tmp_path / "missing.safetensors")
    run_ranks(_failing, 2, [good, missing], tmp_path, timeout=90)
    out = results(tmp_path, 2)
    assert out[0]["error"] == out[1]["error"]
    assert out[0]["error"].startswith("SourceError: 1 of 2 ranks failed loading into Linear")
    assert f"rank 1: {missing}: no such file or directory" in out[0]["error"]
    assert all(r["unchanged"] for r in out)


# --- DCP checkpoints ------------------------------------------------------------------------------


def fsdp_model(world: int, seed: int = 3):
    """`Net`, initialised from `seed`, with every block and then the root sharded by FSDP2."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(seed)
    model = Net()
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _save_dcp(rank, world, directory, folder):
    import torch.distributed.checkpoint as dcp

    model = fsdp_model(world)
    dcp.save({"model": model.state_dict(), "step": 10}, checkpoint_id=directory)
    full = {k: v.full_tensor() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(full, Path(folder) / "full.pt")


def _load_dcp(rank, world, directory, folder):
    model = fsdp_model(world, seed=4)  # other values than the saved model's
    report = sl.load(model, sl.open(directory)["model"])
    full = torch.load(Path(folder) / "full.pt", weights_only=True)
    same = all(torch.equal(v.full_tensor(), full[k]) for k, v in model.state_dict().items())
    save_result(folder, rank, {"ok": report.ok, "same": same})


def test_dcp_checkpoint_loads_into_a_different_world_size(tmp_path):
    directory = str(tmp_path / "dcp")
    run_ranks(_save_dcp, 2, directory, str(tmp_path))
    assert sorted(os.listdir(directory)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    info = sl.inspect(directory)
    assert info["model.blocks.1.0.weight"].shape == (12, 6) and "step" not in info
    run_ranks(_load_dcp, 4, directory, str(tmp_path))
    assert all(r == {"ok": True, "same": True} for r in results(tmp_path, 4))
    single = Net()  # and into an unsharded model, in this (non-distributed) process
    assert sl.load(single, sl.open(directory)["model"]).ok
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert all(torch.equal(v, full[k]) for k, v in single.state_dict().items())
