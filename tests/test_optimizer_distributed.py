"""`sl.load_optimizer` into an FSDP2 model: each rank loads its shard of each state tensor (gloo on CPU)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import torch.distributed as dist
from test_distributed import Net, reference_state, results, run_ranks, save_result

import structload as sl

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")

BATCHES = [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 0, 1, 2]])]


def train(model, optimizer, batches) -> None:
    for idx in batches:
        optimizer.zero_grad()
        model(idx).pow(2).mean().backward()
        optimizer.step()


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for name, child in tree.items():
        path = f"{prefix}.{name}" if prefix else name
        out.update(flat(child, path) if isinstance(child, dict) else {path: child.contiguous()})
    return out


def _fsdp_optimizer(rank, world, weights, state, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (world,))
    expected = safetensors.torch.load_file(state)
    model = Net()
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sl.load(model, weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    report = sl.load_optimizer(optimizer, model, state)
    values, sharded, local = True, True, True
    for path, param in model.named_parameters():
        for key, tensor in optimizer.state[param].items():
            want = expected[f"{path}.{key}"]
            if key == "step":
                values &= torch.equal(tensor, want)
                continue
            sharded &= isinstance(tensor, DTensor) and tensor.placements == param.placements
            local &= tensor.to_local().shape == param.to_local().shape
            values &= torch.equal(tensor.full_tensor(), want)
    train(model, optimizer, BATCHES[2:])  # and training goes on from there
    after = {k: v.full_tensor().tolist() for k, v in model.state_dict().items()}
    save_result(folder, rank, {"ok": report.ok, "values": values, "sharded": sharded, "local": local, "after": after})


def test_fsdp2_ranks_load_their_shard_of_the_state(tmp_path):
    torch.manual_seed(0)
    model = Net()
    model.load_state_dict(reference_state())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, optimizer, BATCHES[:2])
    weights, state = str(tmp_path / "model.safetensors"), str(tmp_path / "optimizer.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    safetensors.torch.save_file(flat(sl.optimizer_state(optimizer, model)), state)
    train(model, optimizer, BATCHES[2:])  # the unsharded run goes on, for comparison

    run_ranks(_fsdp_optimizer, 2, weights, state, tmp_path)
    for outcome in results(tmp_path, 2):
        assert outcome["ok"] and outcome["values"] and outcome["sharded"] and outcome["local"]
        for key, value in model.state_dict().items():
            torch.testing.assert_close(torch.tensor(outcome["after"][key]), value, rtol=1e-5, atol=1e-6)
