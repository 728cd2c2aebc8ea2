"""Write the seed corpus: small, varied, valid checkpoints. Run: python tests/fuzz/make_corpus.py"""

from pathlib import Path

import safetensors.torch
import torch

CORPUS = Path(__file__).resolve().parent / "corpus"


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    torch.manual_seed(0)
    state = {
        "layer.weight": torch.randn(3, 2),
        "layer.bias": torch.randn(3),
        "norm.weight": torch.ones(3, dtype=torch.float16),
        "step": torch.tensor(7),
        "mask": torch.tensor([True, False]),
        "empty": torch.zeros(0, 2),
    }
    safetensors.torch.save_file(state, str(CORPUS / "small.safetensors"))
    safetensors.torch.save_file({"w": torch.arange(4, dtype=torch.bfloat16)}, str(CORPUS / "one.safetensors"))
    torch.save(state, CORPUS / "small.pt")
    base = torch.arange(12.0)
    views = {"model": {"a": base[2:8].view(2, 3), "b": base.view(3, 4).t()}, "epoch": 3, "lr": 0.1}
    torch.save(views, CORPUS / "views.pt")
    write_legacy(state, views)


def write_legacy(state: dict, views: dict) -> None:
    """The same checkpoints in the legacy (pre-1.6, non-zip) format."""
    torch.save(state, CORPUS / "small_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(views, CORPUS / "views_legacy.pt", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
