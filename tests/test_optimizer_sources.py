"""Every source kind `sl.load_optimizer` reads (API.md section 13), and what cannot give the order.

Files are written by torch, safetensors and transformers as their users would;
the checkpoint layouts of Lightning (``optimizer_states``) and of the Hugging
Face Trainer (``optimizer.pt`` beside ``model.safetensors``, two param groups
built by the Trainer's own decay rule) are reproduced field for field.
"""

from __future__ import annotations

import argparse

import pytest
import safetensors.torch
import torch
import torch.nn as nn
import transformers
from optim_models import Model, assert_same_state, params_of, train, trained
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

import structload as sl

ADAM = torch.optim.Adam


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for name, child in tree.items():
        path = f"{prefix}.{name}" if prefix else name
        out.update(flat(child, path) if isinstance(child, dict) else {path: child})
    return out


def fresh(**edits):
    model = Model(**edits)
    return model, ADAM(model.parameters())


def everything(src):
    return [(p, p) for p in params_of(src)]


# --- the tree of sl.optimizer_state, in memory and through files ------------------------------


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_the_tree_through_a_file(writer, tmp_path):
    src, src_opt = trained(ADAM)
    tree = sl.optimizer_state(src_opt, src)
    path = tmp_path / f"optim.{'safetensors' if writer == 'safetensors' else 'pt'}"
    if writer == "safetensors":  # names sorted by the file: the tree is keyed by path, so it does not matter
        safetensors.torch.save_file({k: v.contiguous() for k, v in flat(tree).items()}, path)
    else:
        torch.save({"optimizer": tree, "epoch": 3}, path)
    dst, dst_opt = fresh(order="vkq", head_first=True)
    source = path if writer == "safetensors" else sl.open(path)["optimizer"]
    assert sl.load_optimizer(dst_opt, dst, source).ok
    assert_same_state(dst_opt, dst, src_opt, src, everything(src))


# --- torch state_dict(): indices become paths ---------------------------------------------------


def test_param_names_of_an_optimizer_built_from_named_parameters(tmp_path):
    torch.manual_seed(0)
    src = Model()
    src_opt = ADAM(src.named_parameters())
    train(src, src_opt, range(2))
    torch.save(src_opt.state_dict(), tmp_path / "optimizer.pt")
    for source in (src_opt.state_dict(), tmp_path / "optimizer.pt"):
        dst, dst_opt = fresh(order="kvq", head_first=True)
        assert sl.load_optimizer(dst_opt, dst, source).ok  # no source_model needed
        assert_same_state(dst_opt, dst, src_opt, src, everything(src))


def test_no_names_and_no_source_model_says_what_to_pass():
    _, src_opt = trained(ADAM)
    dst, dst_opt = fresh()
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, src_opt.state_dict())
    (problem,) = error.value.problems
    assert problem.kind == "source" and "keyed by index and has no param_names: pass source_model=" in problem.message
    assert not dst_opt.state
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), strict=False)  # the same one problem, no write
    assert [p.kind for p in report.problems] == ["source"] and not report.missing and not dst_opt.state


def test_source_model_as_a_list_of_names():
    src, src_opt = trained(ADAM, frozen=("embed.bias",))
    dst, dst_opt = fresh(order="vqk")
    report = sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=params_of(src), strict=False)
    assert [p.rsplit(".", 1)[0] for p in report.missing] == ["embed.bias"] * 3
    assert_same_state(dst_opt, dst, src_opt, src, everything(src))


def two_groups(model):
    """Param groups as people build them: the head at another learning rate, listed first."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    return ADAM([{"params": head, "lr": 0.1}, {"params": body}], lr=0.01)


def test_several_groups_need_one_list_of_names_per_group():
    src = Model()
    src_opt = two_groups(src)
    train(src, src_opt, range(2))
    names = params_of(src)
    per_group = [[n for n in names if n.startswith("head.")], [n for n in names if not n.startswith("head.")]]
    dst = Model(order="kqv")
    dst_opt = two_groups(dst)
    for wrong in (names, src):
        with pytest.raises(sl.LoadError, match="2 param groups.*one list of parameter names per param group"):
            sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=wrong)
    assert sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=per_group).ok
    assert_same_state(dst_opt, dst, src_opt, src, everything(src))
    assert [g["lr"] for g in dst_opt.param_groups] == [0.1, 0.01]


def test_an_order_that_does_not_fit_the_state_is_a_source_problem():
    _, src_opt = trained(ADAM)
    dst, dst_opt = fresh()
    with pytest.raises(sl.LoadError) as error:
        sl.load_optimizer(dst_opt, dst, src_opt.state_dict(), source_model=Model(head_first=True))
    assert {p.kind for p in error.value.problems} == {"source"}
    assert "is not the order the optimizer was given" in error.value.problems[0].message


class ConvNet(nn.Module):
    """A model with running statistics, which a state dict lists between parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def trained_convnet(steps=2):
    torch.manual_seed(0)
    model = ConvNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(step))).sum().backward()
        optimizer.step()
    return model, optimizer


def test_a_lightning_checkpoint_through_sl_open(tmp_path):
    model, optimizer = trained_convnet()
    checkpoint = {  # what Lightning's trainer.save_checkpoint writes, for a LightningModule holding `self.model`
        "epoch": 1,
        "global_step": 2,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": argparse.Namespace(lr=0.1),
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    ckpt = sl.open(tmp_path / "last.ckpt")
    dst = ConvNet()
    dst_opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
    report = sl.load_optimizer(
        dst_opt, dst, ckpt["optimizer_states"][0], source_model=ckpt["state_dict"], rename={r"^model\.": ""}
    )
    assert report.ok and len(report.loaded) == 6
    assert_same_state(dst_opt, dst, optimizer, model, everything(model))


def test_a_safetensors_file_cannot_give_the_order(tmp_path):
    model, optimizer = trained_convnet()
    safetensors.torch.save_file(model.state_dict(), tmp_path / "model.safetensors")
    dst = ConvNet()
    dst_opt = torch.optim.SGD(dst.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(sl.LoadError, match="model.safetensors sorts its names and cannot give the parameters' order"):
        sl.load_optimizer(dst_opt, dst, optimizer.state_dict(), source_model=tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "model.pt")  # a torch file keeps the order
    assert sl.load_optimizer(dst_opt, dst, optimizer.state_dict(), source_model=tmp_path / "model.pt").ok
    assert_same_state(dst_opt, dst, optimizer, model, everything(model))


def test_an_hf_trainer_checkpoint(tmp_path):
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    # the param groups of transformers.Trainer.create_optimizer, with its own decay rule
    decay = transformers.Trainer.get_decay_parameter_names(None, model)
    names = [[n for n, p in model.named_parameters() if (n in decay) == wanted] for wanted in (True, False)]

    def trainer_optimizer(m):
        params = dict(m.named_parameters())
        groups = [{"params": [params[n] for n in ns], "weight_decay": wd} for ns, wd in zip(names, (0.01, 0.0))]
        return torch.optim.AdamW(groups, lr=1e-3)

    optimizer = trainer_optimizer(model)
    model(input_ids=torch.tensor([[1, 2, 3, 4]])).last_hidden_state.sum().backward()
    optimizer.step()
    model.save_pretrained(tmp_path)
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")

    resumed = transformers.BertModel.from_pretrained(tmp_path)
    resumed_opt = trainer_optimizer(resumed)
    with pytest.raises(sl.LoadError, match="sorts its names"):
        sl.load_optimizer(resumed_opt, resumed, tmp_path / "optimizer.pt", source_model=tmp_path / "model.safetensors")
    with pytest.raises(sl.LoadError, match="2 param groups"):
        sl.load_optimizer(resumed_opt, resumed, tmp_path / "optimizer.pt", source_model=resumed)
    assert sl.load_optimizer(resumed_opt, resumed, tmp_path / "optimizer.pt", source_model=names).ok
    assert_same_state(resumed_opt, resumed, optimizer, model, [(n, n) for ns in names for n in ns])


# --- FQN-keyed dicts of torch.distributed.checkpoint -----------------------------------------


@pytest.mark.parametrize("flatten", [False, True])
def test_get_optimizer_state_dict(flatten):
    src, src_opt = trained(ADAM)
    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    source = get_optimizer_state_dict(src, src_opt, options=options)
    dst, dst_opt = fresh(order="qvk", head_first=True)
    assert sl.load_optimizer(dst_opt, dst, source).ok
    assert_same_state(dst_opt, dst, src_opt, src, everything(src))
