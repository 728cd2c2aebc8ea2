"""Checkpoints as users hold them: pickles with objects beyond tensors, whole pickled models, .npz.

The training code of a whole pickled model lives in a package written to a
temporary directory and used only by a subprocess: the test process never
imports it, just as a user without the training repo.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_cli import run

import structload as sl
from helpers import randomized

TRAINING_CODE = """
import torch
import torch.nn as nn


class Conv(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.register_buffer("scratch", torch.ones(2), persistent=False)


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(Conv(3, 4), Conv(4, 4), nn.Linear(4, 2))
        self.register_buffer("anchors", torch.arange(6.0).view(3, 2))
        self.names = ["cat", "dog"]


class Config:
    def __init__(self, depth):
        self.depth = depth
        self.widths = [4, 4]
"""

SAVE = """
import argparse, sys
import numpy as np
import torch
sys.path.insert(0, sys.argv[1])
from yolo_like.models import Config, Detector

torch.manual_seed(0)
model = Detector()
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(); m.running_var.uniform_(1, 2); m.num_batches_tracked.fill_(7)
out = sys.argv[2]
torch.save(model, out + "/whole.pt")
torch.save(model.state_dict(), out + "/state.pt")
torch.save({"model": model.half(), "epoch": -1, "optimizer": None, "config": Config(3),
            "date": "2026-11-25"}, out + "/yolo.pt")
hparams = argparse.Namespace(lr=0.1, layers=4, name="run-7", betas=(0.9, 0.99))
torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "epoch": 12,
            "loss": np.float32(0.25), "step": np.int64(1000), "mean": np.arange(3, dtype=np.float64),
            "config": {"width": 4, "act": "silu"}}, out + "/lightning.ckpt")
"""


class Conv(nn.Module):  # the same architecture, written again by the user who loads it
    def __init__(self, c_in, c_out, bias=False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, bias=bias)
        self.bn = nn.BatchNorm2d(c_out)


class Detector(nn.Module):
    def __init__(self, bias=False):
        super().__init__()
        self.model = nn.Sequential(Conv(3, 4, bias), Conv(4, 4, bias), nn.Linear(4, 2))
        self.register_buffer("anchors", torch.zeros(3, 2))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    code = tmp_path_factory.mktemp("training_repo")
    (code / "yolo_like").mkdir()
    (code / "yolo_like" / "__init__.py").write_text("")
    (code / "yolo_like" / "models.py").write_text(TRAINING_CODE)
    out = tmp_path_factory.mktemp("checkpoints")
    subprocess.run([sys.executable, "-c", SAVE, str(code), str(out)], check=True, timeout=300)
    assert "yolo_like" not in sys.modules
    return out


def test_whole_pickled_model_loads_without_its_code(files):
    model = randomized(Detector(), 5)
    report = sl.load(model, str(files / "whole.pt"))
    assert report.ok and "yolo_like" not in sys.modules
    expected = torch.load(files / "state.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert report.pickled[""] == "yolo_like.models.Detector"
    assert report.pickled["model.0"] == "yolo_like.models.Conv"
    assert report.pickled["model.2"] == "torch.nn.modules.linear.Linear"
    assert "source: a pickled yolo_like.models.Detector (6 types), read without importing" in str(report)


def test_whole_model_state_is_state_dict_order_without_non_persistent_buffers(files):
    paths = list(sl.inspect(str(files / "whole.pt")))
    expected = list(torch.load(files / "state.pt", weights_only=True))
    assert paths == expected  # registration order; no "scratch" buffers, no conv biases
    assert not any("scratch" in p for p in paths)


def test_a_bias_free_pickled_module_zeroes_the_destination_bias(files):
    model = randomized(Detector(bias=True), 5)
    report = sl.load(model, str(files / "whole.pt"))
    assert report.zeroed == ["model.0.conv.bias", "model.1.conv.bias"]
    assert not model.model[0].conv.bias.any()


def test_yolo_style_file_loads_its_model_entry(files):
    tree = sl.open(str(files / "yolo.pt"))
    assert tree.types["model"] == "yolo_like.models.Detector" and tree.types["config"] == "yolo_like.models.Config"
    assert tree["epoch"] == -1 and tree["optimizer"] is None and tree["date"] == "2026-11-25"
    assert tree["config"].depth == 3 and tree["config"].widths == [4, 4]
    model = randomized(Detector(), 5)
    report = sl.load(model, tree["model"])
    assert report.ok and [c.src_dtype for c in report.cast][:1] == [torch.float16]
    expected = torch.load(files / "state.pt", weights_only=True)
    assert torch.equal(model.model[2].weight, expected["model.2.weight"].half().float())
    assert not torch.equal(model.model[2].weight, expected["model.2.weight"])


def test_whole_file_load_names_what_is_not_a_tensor(files):
    model = randomized(Detector(), 5)
    with pytest.raises(sl.LoadError) as info:
        sl.load(model, str(files / "yolo.pt"))
    message = str(info.value)
    assert "config: unexpected in source (what the pickle makes with yolo_like.models.Config" in message
    assert "rename" in message  # the "model." prefix hint


def test_lightning_checkpoint_with_namespace_and_numpy_values(files):
    tree = sl.open(str(files / "lightning.ckpt"))
    hparams = tree["hyper_parameters"]
    assert isinstance(hparams, sl.Pickled) and hparams.type_name == "argparse.Namespace"
    assert (hparams.lr, hparams["layers"], hparams.name, hparams.betas) == (0.1, 4, "run-7", (0.9, 0.99))
    assert repr(hparams) == "argparse.Namespace(lr=0.1, layers=4, name='run-7', betas=(0.9, 0.99))"
    assert dict(hparams.fields()) == {"lr": 0.1, "layers": 4, "name": "run-7", "betas": (0.9, 0.99)}
    assert tree["epoch"] == 12 and tree["loss"] == 0.25 and tree["step"] == 1000
    assert tree["mean"].read().tolist() == [0.0, 1.0, 2.0]
    assert tree["config"]["width"] == 4 and tree["config"]["act"] == "silu"
    model = randomized(Detector(), 5)
    assert sl.load(model, tree["state_dict"]).ok
    assert sl.load(randomized(Detector(), 6), str(files / "lightning.ckpt"), include=None, strict=False).loaded == []


def test_non_tensor_parts_are_read_only(files):
    hparams = sl.open(str(files / "lightning.ckpt"))["hyper_parameters"]
    with pytest.raises(AttributeError, match="read-only"):
        hparams.lr = 1.0
    with pytest.raises(TypeError):
        hparams.state["lr"] = 1.0
    with pytest.raises(AttributeError, match="read-only"):
        type(hparams).type_name = "os.system"
    assert hparams.lr == 0.1


def test_tensors_inside_a_placeholder_state_stay_lazy_file_tensors(tmp_path):
    torch.save({"opt": argparse.Namespace(w=torch.ones(2, 3))}, tmp_path / "x.pt")
    leaf = sl.open(str(tmp_path / "x.pt"))["opt"].w
    assert type(leaf).__name__ == "_UnpickledTensor" and leaf.shape == (2, 3)
    assert torch.equal(leaf.read(), torch.ones(2, 3))


def test_inspect_command_names_the_pickled_types(files):
    result = run("inspect", str(files / "whole.pt"), "--depth", "2")
    assert result.returncode == 0, result.stderr
    assert "yolo_like.models.Detector" in result.stdout and "yolo_like.models.Conv" in result.stdout
    assert "read without importing or running their code" in result.stdout


def test_opening_reads_only_the_pickle_and_a_load_only_its_tensors(files, monkeypatch):
    from structload.sources._io import local as _local

    read = []
    original = _local.LocalFile.read_into
    monkeypatch.setattr(_local.LocalFile, "read_into", lambda self, b, o: (read.append(len(b)), original(self, b, o)))
    tree = sl.open(str(files / "whole.pt"))
    opened = sum(read)
    records = [n for n in zipfile.ZipFile(files / "whole.pt").namelist() if "/data/" in n]
    assert opened == 4 + 30 * len(records)  # the zip magic, a local header per storage record, nothing else
    model = randomized(Detector(), 5)
    sl.load(model, tree, include="model.2.*")
    assert sum(read) - opened == 4 * (2 * 4 + 2)  # the Linear's weight and bias, nothing else


# --- .npz ---------------------------------------------------------------------------------------


def npz_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "params/dense/kernel": rng.standard_normal((4, 3)).astype(np.float32),
        "params/dense/bias": rng.standard_normal(3).astype(np.float32),
        "params/out/kernel": np.asfortranarray(rng.standard_normal((3, 2))),
        "steps": np.array(7, dtype=np.int64),
        "mask": np.array([True, False]),
    }


class Flax(nn.Module):  # a user's port: a dict of parameters shaped like the export
    def __init__(self):
        super().__init__()
        self.dense = nn.ParameterDict({"kernel": nn.Parameter(torch.zeros(4, 3)), "bias": nn.Parameter(torch.zeros(3))})
        self.out = nn.ParameterDict({"kernel": nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))})


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_loads_lazily(tmp_path, save):
    arrays = npz_arrays()
    save(tmp_path / "export.npz", **arrays)
    tree = sl.open(str(tmp_path / "export.npz"))
    assert list(tree) == ["params", "steps", "mask"]
    info = sl.inspect(str(tmp_path / "export.npz"))
    assert info["params.out.kernel"].shape == (3, 2) and info["mask"].dtype == torch.bool
    model = Flax()
    report = sl.load(model, tree["params"])
    assert report.ok
    assert np.array_equal(model.dense.kernel.detach().numpy(), arrays["params/dense/kernel"])
    assert np.array_equal(model.out.kernel.detach().numpy(), arrays["params/out/kernel"])  # Fortran order
    assert torch.equal(tree["mask"].read(), torch.tensor([True, False]))


def test_stored_npz_reads_only_the_arrays_loaded(tmp_path, monkeypatch):
    from structload.sources._io import local as _local

    np.savez(tmp_path / "export.npz", **npz_arrays())
    read = []
    original = _local.LocalFile.read_into
    monkeypatch.setattr(_local.LocalFile, "read_into", lambda self, b, o: (read.append(len(b)), original(self, b, o)))
    tree = sl.open(str(tmp_path / "export.npz"))
    opened = sum(read)
    model = Flax()
    sl.load(model, tree["params"], include="dense.bias", strict=False)
    assert sum(read) - opened == 3 * 4


def test_npz_object_arrays_are_problems_at_their_path(tmp_path):
    np.savez(tmp_path / "objects.npz", w=np.ones(2, np.float32), names=np.array(["a", None], dtype=object))
    with pytest.raises(sl.LoadError) as info:
        sl.load({"w": torch.zeros(2)}, str(tmp_path / "objects.npz"))
    assert "names: unexpected in source" in str(info.value)
    with pytest.raises(sl.LoadError, match="holds objects"):
        sl.load({"w": torch.zeros(2), "names": torch.zeros(2)}, str(tmp_path / "objects.npz"))


def test_npz_under_another_name_is_found_by_content(tmp_path):
    np.savez(tmp_path / "export.npz", w=np.ones(2, np.float32))
    (tmp_path / "export.npz").rename(tmp_path / "weights.data")
    assert list(sl.inspect(str(tmp_path / "weights.data"))) == ["w"]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (npy_bytes(np.ones(2, np.float32))[:-3], "holds 5 bytes of data, 8 expected"),
        (npy_bytes(np.ones(2, np.float32)).replace(b"\x93NUMPY", b"\x93NUMPZ"), "not a .npy array"),
        (npy_bytes(np.ones(2, np.float32)).replace(b"'descr'", b"'descX'"), "corrupt .npy header"),
        (npy_bytes(np.ones(2, np.float32)).replace(b"(2,)", b"(-2,)"), "invalid shape"),
        (npy_bytes(np.ones(2, np.float32)).replace(b"\x01\x00", b"\x09\x00", 1), "unknown .npy version"),
        (npy_bytes(np.ones(2, np.float32)).replace(b"'<f4'", b"__import__('os')"), "corrupt .npy header"),
    ],
)
def test_damaged_npz_is_a_source_error_naming_the_file(tmp_path, member, message):
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("w.npy", member)
    with pytest.raises(sl.SourceError, match=message) as info:
        sl.load({"w": torch.zeros(2)}, str(bad))
    assert str(bad) in str(info.value)


def test_truncated_npz_is_a_source_error(tmp_path):
    np.savez(tmp_path / "good.npz", w=np.ones(2, np.float32))
    raw = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(sl.SourceError, match="corrupt or truncated"):
        sl.open(str(tmp_path / "cut.npz"))


def test_npz_from_the_command_line(tmp_path):
    np.savez(tmp_path / "a.npz", w=np.ones(2, np.float32), b=np.zeros(3, np.float32))
    np.savez(tmp_path / "b.npz", w=np.ones(2, np.float32))
    assert "w  (2,)  float32" in run("inspect", str(tmp_path / "a.npz")).stdout
    result = run("diff", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
    assert result.returncode == 1 and "only in a" in result.stdout
    (tmp_path / "factory.py").write_text(
        textwrap.dedent(
            """
            import torch
            def build():
                return torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.zeros(2))})
            """
        )
    )
    result = run("check", "factory:build", str(tmp_path / "b.npz"), env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_npz_that_is_not_one(tmp_path):
    with zipfile.ZipFile(tmp_path / "empty.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(sl.SourceError, match="holds no .npy arrays"):
        sl.open(str(tmp_path / "empty.npz"))
