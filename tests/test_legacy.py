"""Legacy (pre-1.6, non-zip) ``torch.save`` files, as published weights still ship them (API.md §10).

Every fixture is written by torch itself with ``_use_new_zipfile_serialization=False``,
and every value is compared with ``torch.load(weights_only=True, map_location="cpu")``.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import structload as sl
from helpers import Net, TiedLM, randomized
from structload._cli import main
from structload.sources._io.file_tensor import FileTensor
from structload.sources._io.local import LocalFile

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
]


def save_legacy(obj, path) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert not Path(path).read_bytes()[:4].startswith(b"PK")  # really the legacy format, not a zip
    return str(path)


def reference(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def flat_tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested container by dotted path, as structload names them."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found = {prefix[:-1]: obj} if isinstance(obj, torch.Tensor) else {}
    for key, value in items:
        found |= flat_tensors(value, f"{prefix}{key}.")
    return found


def assert_every_value_matches_torch(path) -> dict:
    """Each tensor structload reads from `path` equals torch.load's (shape, dtype, values, bits)."""
    expected = flat_tensors(reference(path))
    tensors = {k: v for k, v in sl.open(path).tensors().items() if isinstance(v, FileTensor)}  # not numbers
    assert list(tensors) == list(expected)
    for name, leaf in tensors.items():
        value = leaf.read()
        assert value.dtype == expected[name].dtype and value.shape == expected[name].shape, name
        assert torch.equal(value.view(torch.uint8) if value.dim() else value, _bytes(expected[name])), name
    return expected


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8) if tensor.dim() else tensor


def test_a_state_dict_loads_bit_for_bit_and_the_model_keeps_its_parameters(tmp_path):
    source = randomized(Net(n=2), 1)
    path = save_legacy(source.state_dict(), tmp_path / "net.pth")
    assert_every_value_matches_torch(path)
    model = randomized(Net(n=2), 2)
    weight = model.head.weight
    report = sl.load(model, path)
    assert report.ok and report.loaded == list(source.state_dict())
    assert model.head.weight is weight
    for name, value in reference(path).items():
        assert torch.equal(model.state_dict()[name], value), name


def test_views_offsets_and_shared_storages_come_back_as_torch_gives_them(tmp_path):
    base = torch.arange(24.0)
    tied = randomized(TiedLM(), 3).state_dict()  # lm_head.weight and wte.weight: one storage
    obj = {
        "slice": base[5:11],
        "grid": base[2:14].view(3, 4),
        "transposed": base.view(4, 6).t(),
        "strided": base.view(4, 6)[:, ::2],
        "scalar": base[7],
        "empty": base[3:3],
        "tied": tied,
        "other": torch.ones(3, dtype=torch.float16),
    }
    path = save_legacy(obj, tmp_path / "views.pt")
    assert_every_value_matches_torch(path)
    tree = sl.open(path)
    assert tree["transposed"].shape == (6, 4) and tree["tied.lm_head.weight"].same_data(tree["tied.wte.weight"])
    dst = TiedLM()
    assert sl.load(dst, tree["tied"]).ok and torch.equal(dst.wte.weight, tied["wte.weight"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_torch_writes_in_this_format(tmp_path, dtype):
    values = (torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 50).to(dtype)
    path = save_legacy({"w": values, "view": values[1:4, 1:]}, tmp_path / "typed.pt")
    assert_every_value_matches_torch(path)
    dst = {"w": torch.zeros(5, 3, dtype=dtype)}
    assert sl.load(dst, path, exclude=None, strict=False).loaded == ["w"]
    assert torch.equal(dst["w"], values)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch.load's own, for the protocols it refuses
@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_every_pickle_protocol_torch_save_accepts(tmp_path, protocol):
    state = randomized(Net(n=1), 11).state_dict()
    path = tmp_path / f"protocol{protocol}.pt"
    torch.save(state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    if protocol in (1, 4, 5):  # torch.load(weights_only=True) refuses these ("Unsupported operand")
        with pytest.raises(pickle.UnpicklingError):
            reference(path)
    expected = torch.load(path, weights_only=False, map_location="cpu")  # trusted: written just above
    tensors = sl.open(str(path)).tensors()
    assert list(tensors) == list(expected) and all(torch.equal(tensors[k].read(), v) for k, v in expected.items())
    model = Net(n=1)
    assert sl.load(model, str(path)).ok and torch.equal(model.head.weight, state["head.weight"])


def save_with_location(obj, path, location: str, monkeypatch) -> str:
    """A legacy file whose storages say they were saved on `location` (no such device needed):
    torch.save writes whatever ``location_tag`` gives into the pickle."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: location)
        return save_legacy(obj, path)


@pytest.mark.parametrize("location", ["cuda:0", "cuda:3", "mps"])
def test_storages_saved_on_a_gpu_are_read_onto_the_destinations_device(tmp_path, monkeypatch, location):
    source = randomized(Net(n=1), 4)
    path = save_with_location(source.state_dict(), tmp_path / "gpu.pt", location, monkeypatch)
    assert location.encode() in Path(path).read_bytes()
    if location.startswith("cuda") and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # what users of torch.load meet without map_location
            torch.load(path, weights_only=True)
    assert_every_value_matches_torch(path)
    model = Net(n=1)
    assert sl.load(model, path).ok
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_a_training_checkpoint_loads_its_parts(tmp_path):
    model = randomized(Net(n=2), 5)
    checkpoint = {"model_state": model.state_dict(), "optimizer_state": adamw_state(model), "step": 1234}
    path = save_legacy(checkpoint, tmp_path / "checkpoint.pt")
    expected = assert_every_value_matches_torch(path)
    tree = sl.open(path)
    assert tree["step"] == 1234 and tree["optimizer_state.param_groups.0.lr"] == 0.01
    assert torch.equal(tree["optimizer_state.state.0.exp_avg"].read(), expected["optimizer_state.state.0.exp_avg"])
    fresh = Net(n=2)
    report = sl.load(fresh, tree["model_state"])
    assert report.ok and all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(sl.LoadError, match="unexpected"):  # the whole file is not a model's state
        sl.load(Net(n=2), path)


def adamw_state(model: nn.Module) -> dict:
    """What ``torch.optim.AdamW(model.parameters(), lr=0.01).state_dict()`` holds after some steps,
    written out (building an optimizer imports torch._dynamo: seconds)."""
    params = list(model.parameters())
    moments = torch.Generator().manual_seed(0)
    state = {
        i: {
            "step": torch.tensor(3.0),
            "exp_avg": torch.randn(p.shape, generator=moments),
            "exp_avg_sq": torch.rand(p.shape),
        }
        for i, p in enumerate(params)
    }
    group = {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False}
    group |= {"foreach": None, "maximize": False, "capturable": False, "differentiable": False, "fused": None}
    return {"state": state, "param_groups": [{**group, "params": list(range(len(params)))}]}


TRAINING_CODE = """
import torch
import torch.nn as nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scratch", torch.ones(2), persistent=False)

    def __setstate__(self, state):
        raise SystemExit("the training code ran")
"""

SAVE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from legacy_repo.models import Encoder
torch.manual_seed(0)
model = torch.nn.Sequential(Encoder(), torch.nn.Linear(4, 2))
model[0].bn.running_mean.uniform_(); model[0].bn.num_batches_tracked.fill_(9)
torch.save(model, sys.argv[2] + "/whole.pt", _use_new_zipfile_serialization=False)
torch.save(model.state_dict(), sys.argv[2] + "/state.pt", _use_new_zipfile_serialization=False)
"""


@pytest.fixture(scope="module")
def whole_module(tmp_path_factory):
    """A whole pickled module in the legacy format, whose code this process never imports."""
    code = tmp_path_factory.mktemp("repo")
    (code / "legacy_repo").mkdir()
    (code / "legacy_repo" / "__init__.py").write_text("")
    (code / "legacy_repo" / "models.py").write_text(TRAINING_CODE)
    out = tmp_path_factory.mktemp("legacy_files")
    subprocess.run([sys.executable, "-c", SAVE, str(code), str(out)], check=True, timeout=300)
    return out


class Encoder(nn.Module):  # the same architecture, written again by whoever loads it
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)


def test_a_whole_pickled_module_is_its_state_tree_and_its_code_never_runs(whole_module):
    assert b"legacy_repo.models" in (whole_module / "whole.pt").read_bytes()  # the class and its source
    model = nn.Sequential(Encoder(), nn.Linear(4, 2))
    report = sl.load(model, str(whole_module / "whole.pt"))
    assert report.ok and "legacy_repo" not in sys.modules
    expected = reference(whole_module / "state.pt")
    assert list(sl.inspect(str(whole_module / "whole.pt"))) == list(expected)  # no "scratch"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert report.pickled["0"] == "legacy_repo.models.Encoder"


def test_only_the_pickles_and_the_loaded_tensors_are_read(tmp_path, monkeypatch):
    source = randomized(Net(d=128, n=3), 6)
    path = save_legacy(source.state_dict(), tmp_path / "net.pt")
    state = source.state_dict()
    data = sum(8 + t.numel() * t.element_size() for t in state.values())  # every storage: header + bytes
    pickles = (tmp_path / "net.pt").stat().st_size - data
    read: list[int] = []
    original = LocalFile.read_range
    monkeypatch.setattr(LocalFile, "read_range", lambda self, b, o: (read.append(len(b)), original(self, b, o))[1])
    tree = sl.open(path)
    # the pickles, pickle's own read-ahead (128 KiB) and the storages' headers; not the 800 KiB of data
    assert sum(read) <= pickles + (128 << 10) + 262 + 8 * len(state) < data
    read.clear()
    model = Net(d=128, n=3)
    report = sl.load(model, tree, include="blocks.1.*", strict=False)
    assert report.loaded == [k for k in state if k.startswith("blocks.1.")]
    assert sum(read) == sum(state[k].numel() * 4 for k in report.loaded)
    assert torch.equal(model.blocks[1].fc1.weight, source.blocks[1].fc1.weight)
    assert not torch.equal(model.blocks[0].fc1.weight, source.blocks[0].fc1.weight)


def aligned_file(tmp_path, tensor: torch.Tensor, aligned: bool) -> str:
    """A legacy file {"pad": ..., "weight": tensor} whose data starts aligned to the dtype, or not:
    the padding string moves the storages, which follow the pickle."""
    for pad in range(16):
        path = save_legacy({"pad": "x" * pad, "weight": tensor}, tmp_path / f"pad{pad}.pt")
        offset = sl.open(path)["weight"].offset
        if (offset % tensor.element_size() == 0) == aligned:
            return path
    raise AssertionError("no padding gives that alignment")


@pytest.mark.parametrize("aligned", [True, False])
def test_mmap_maps_what_dtype_and_alignment_allow_and_reads_the_rest(tmp_path, aligned):
    weight = torch.randn(6, 4)
    path = aligned_file(tmp_path, weight, aligned)
    with sl.init_empty_weights():
        dst = nn.Linear(4, 6, bias=False)
    report = sl.load(dst, path, mmap=True, strict=False)
    assert report.loaded == ["weight"] and report.mapped == (["weight"] if aligned else [])
    assert torch.equal(dst.weight, reference(path)["weight"]) and not dst.weight.is_meta
    if aligned:  # a view of the file's mapping: the file's bytes, no copy
        leaf = sl.open(path)["weight"]
        assert dst.weight.untyped_storage().nbytes() == leaf.file.size  # the whole file, mapped
        assert dst.weight.storage_offset() * 4 == leaf.offset


def test_inspect_diff_and_open_treat_legacy_files_like_zip_files(tmp_path):
    state = randomized(Net(n=2), 7).state_dict()
    legacy = save_legacy(state, tmp_path / "legacy.pt")
    torch.save(state, tmp_path / "zip.pt")
    assert {k: (v.shape, v.dtype) for k, v in sl.inspect(legacy).items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in state.items()
    }
    assert sl.diff(legacy, str(tmp_path / "zip.pt"), values=True).ok
    changed = dict(state, **{"head.bias": state["head.bias"] + 1})
    other = save_legacy(changed, tmp_path / "changed.pt")
    assert sl.diff(legacy, other, values=True).values == ["head.bias"]
    data = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "no_suffix").write_bytes(data)  # found by its magic number, whatever its name
    assert list(sl.inspect(str(tmp_path / "no_suffix"))) == list(state)


FACTORY = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import Net

def make():
    return Net(n=2)
"""


def test_command_line_inspect_diff_and_check(tmp_path, monkeypatch, capsys):
    state = randomized(Net(n=2), 8).state_dict()
    legacy = save_legacy(state, tmp_path / "legacy.pth")
    other = save_legacy({**state, "head.bias": state["head.bias"] * 2}, tmp_path / "other.pth")
    (tmp_path / "factory.py").write_text(FACTORY.format(tests=str(Path(__file__).parent)))
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", legacy, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "head.bias" in json.dumps(shown) and "blocks" in json.dumps(shown)
    assert main(["diff", legacy, other, "--values"]) == 1
    assert "head.bias" in capsys.readouterr().out
    assert main(["diff", legacy, legacy]) == 0
    assert main(["check", "factory:make", legacy]) == 0
    assert main(["check", "factory:make", legacy, "--include", "blocks.*", "--no-strict"]) == 0
    capsys.readouterr()


def test_a_legacy_sharded_checkpoint_loads_shard_by_shard(tmp_path):
    state = randomized(Net(n=2), 9).state_dict()
    names = list(state)
    shards = {"pytorch_model-1.bin": names[:5], "pytorch_model-2.bin": names[5:]}
    for file, keys in shards.items():
        save_legacy({k: state[k] for k in keys}, tmp_path / file)
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model = Net(n=2)
    assert sl.load(model, str(tmp_path)).ok
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_transformers_save_pretrained_bins_in_the_legacy_format(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    source = transformers.BertModel(config)
    path = save_legacy(source.state_dict(), tmp_path / "pytorch_model.bin")
    assert_every_value_matches_torch(path)
    torch.manual_seed(1)
    model = transformers.BertModel(config)
    report = sl.load(model, path)
    assert report.ok
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_a_slice_of_a_bigger_storage_reads_only_its_own_bytes(tmp_path, monkeypatch):
    big = torch.arange(1000.0)
    path = save_legacy({"w": big[10:14]}, tmp_path / "slice.pt")  # torch writes all 1000 elements
    leaf = sl.open(path)["w"]
    read: list[int] = []
    original = LocalFile.read_range
    monkeypatch.setattr(LocalFile, "read_range", lambda self, b, o: (read.append(len(b)), original(self, b, o))[1])
    assert leaf.shape == (4,) and torch.equal(leaf.read(), big[10:14]) and read == [16]


def test_a_legacy_file_behind_a_url(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    state = randomized(Net(n=2), 10).state_dict()
    path = save_legacy(state, tmp_path / "net.pt")
    url = "memory://structload-legacy/net.pt"
    with fsspec.open(url, "wb") as stream:
        stream.write(Path(path).read_bytes())
    try:
        assert list(sl.inspect(url)) == list(state)
        model = Net(n=2)
        assert sl.load(model, url).ok
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    finally:
        fsspec.filesystem("memory").rm(url)
