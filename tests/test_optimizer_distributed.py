"""`sl.load_optimizer` into an FSDP2 model: each rank loads its shard of each state tensor (gloo on CPU)."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
import torch.distributed as dist
from test_distributed import Net, reference_state, results, run_ranks, save_result

import structload as sl
from structload.convert import Concat

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


def state_as_expected(model, optimizer, expected: dict) -> tuple[bool, bool, bool]:
    """Whether each parameter's state has the `expected` values (by ``path.key``), is a DTensor in
    the parameter's placements, and has the parameter's local shape on this rank."""
    from torch.distributed.tensor import DTensor

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
    return values, sharded, local


def _net_case(mesh, weights, state) -> dict:
    from torch.distributed.fsdp import fully_shard

    expected = safetensors.torch.load_file(state)
    model = Net()
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sl.load(model, weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    report = sl.load_optimizer(optimizer, model, state)
    values, sharded, local = state_as_expected(model, optimizer, expected)
    train(model, optimizer, BATCHES[2:])  # and training goes on from there
    after = {k: v.full_tensor().tolist() for k, v in model.state_dict().items()}
    return {"ok": report.ok, "values": values, "sharded": sharded, "local": local, "after": after}


def _ranks(rank, world, net, fused, folder):
    """Both cases on each rank, in one process group (spawning the ranks is what takes the time)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    save_result(folder, rank, {"net": _net_case(mesh, *net), "fused": _fused_case(mesh, *fused)})


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of two FSDP2 ranks loaded, and the unsharded models it is checked against."""
    folder = tmp_path_factory.mktemp("fsdp2_optimizer")
    net, net_args = net_case(folder)
    fused_args = fused_case(folder / "fused")
    run_ranks(_ranks, 2, net_args, fused_args, folder)
    return results(folder, 2), net


def net_case(folder):
    torch.manual_seed(0)
    model = Net()
    model.load_state_dict(reference_state())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, optimizer, BATCHES[:2])
    weights, state = str(folder / "model.safetensors"), str(folder / "optimizer.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    safetensors.torch.save_file(flat(sl.optimizer_state(optimizer, model)), state)
    train(model, optimizer, BATCHES[2:])  # the unsharded run goes on, for comparison
    return model, (weights, state)


def test_fsdp2_ranks_load_their_shard_of_the_state(ranks):
    outcomes, model = ranks
    for outcome in (o["net"] for o in outcomes):
        assert outcome["ok"] and outcome["values"] and outcome["sharded"] and outcome["local"]
        for key, value in model.state_dict().items():
            torch.testing.assert_close(torch.tensor(outcome["after"][key]), value, rtol=1e-5, atol=1e-6)


# --- converters with sharded state: q, k, v fused into an FSDP2 model's qkv --------------------

FUSE = [
    Concat(["attn.q.weight", "attn.k.weight", "attn.v.weight"], into="attn.qkv.weight"),
    Concat(["attn.q.bias", "attn.k.bias", "attn.v.bias"], into="attn.qkv.bias"),
]


def _fused_case(mesh, weights, state, expected_file) -> dict:
    from optim_models import Model
    from torch.distributed.fsdp import fully_shard

    expected = safetensors.torch.load_file(expected_file)
    model = Model(fused=True)
    fully_shard(model.attn, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sl.load(model, weights, convert=FUSE)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    report = sl.load_optimizer(optimizer, model, state, convert=FUSE)
    values, sharded, local = state_as_expected(model, optimizer, expected)
    sharded = sharded and local
    converted = sorted(c.path for c in report.converted)
    return {"ok": report.ok, "values": values, "sharded": sharded, "converted": converted}


def fused_case(folder):
    """A model with q, k, v trained by Adam; its weights, its state and what the fused state must be."""
    from optim_models import OPTIMIZERS, Model, trained

    folder.mkdir()
    src, src_opt = trained(OPTIMIZERS["adam"])
    weights, state = str(folder / "model.safetensors"), str(folder / "optimizer.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, weights)
    tree = sl.optimizer_state(src_opt, src)
    safetensors.torch.save_file(flat(tree), state)
    # what each fused parameter's state must be: q's, k's and v's concatenated; step as it is
    expected = {}
    for path, _ in Model(fused=True).named_parameters():
        if path.startswith("attn.qkv."):
            name = path.rsplit(".", 1)[1]
            pieces = [tree["attn"][x][name] for x in "qkv"]
            expected.update({f"{path}.{key}": torch.cat([p[key] for p in pieces]) for key in ("exp_avg", "exp_avg_sq")})
            expected[f"{path}.step"] = pieces[0]["step"]
        else:
            node = tree
            for part in path.split("."):
                node = node[part]
            expected.update({f"{path}.{key}": value for key, value in node.items()})
    safetensors.torch.save_file({k: v.contiguous() for k, v in expected.items()}, str(folder / "expected.safetensors"))
    return weights, state, str(folder / "expected.safetensors")


def test_fsdp2_ranks_load_their_shard_of_fused_state(ranks):
    for outcome in (o["fused"] for o in ranks[0]):
        assert outcome["ok"] and outcome["values"] and outcome["sharded"]
        assert {c.rsplit(".", 1)[0] for c in outcome["converted"]} == {"attn.qkv.weight", "attn.qkv.bias"}
