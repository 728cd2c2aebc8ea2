"""`structload demo`: the main job, on generated data, in one screen.

A small "pretrained" classifier and a custom model that differs from it:
the custom model renames ``blocks`` to ``layers``, fine-tunes biases the
pretrained MLPs never had, and adds a ``probe`` head. The demo loads one into
the other non-strictly, prints the report, then shows a strict load failing
with its path-aware error while the model stays bitwise unchanged.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from ._load import load
from ._report import LoadError


class MLP(nn.Module):
    def __init__(self, d: int, bias: bool):
        super().__init__()
        self.up = nn.Linear(d, 4 * d, bias=bias)
        self.down = nn.Linear(4 * d, d, bias=bias)


class Block(nn.Module):
    def __init__(self, d: int, bias: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = MLP(d, bias)


class Pretrained(nn.Module):
    """The checkpoint's model: bias-free MLPs, its blocks called ``blocks``."""

    def __init__(self, d: int = 16, depth: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(100, d)
        self.blocks = nn.ModuleList(Block(d, bias=False) for _ in range(depth))
        self.head = nn.Linear(d, classes)


class Custom(nn.Module):
    """The user's model: ``layers`` instead of ``blocks``, MLP biases, an extra ``probe`` head."""

    def __init__(self, d: int = 16, depth: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(100, d)
        self.layers = nn.ModuleList(Block(d, bias=True) for _ in range(depth))
        self.head = nn.Linear(d, classes)
        self.probe = nn.Linear(d, 2)


def fingerprint(model: nn.Module) -> str:
    """A short hash of every byte of the model's state."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def run(console: Console | None = None) -> int:
    console = console or Console()
    torch.manual_seed(0)
    checkpoint = Pretrained().state_dict()
    model = Custom()

    console.rule("[bold]structload demo")
    console.print(
        "checkpoint: [cyan]Pretrained[/] (bias-free MLPs, [cyan]blocks.*[/])   "
        "model: [cyan]Custom[/] (MLP biases, [cyan]layers.*[/], extra [cyan]probe[/] head)"
    )
    console.print('\n[bold]1.[/] sl.load(model, checkpoint, rename={r"^blocks\\.": "layers."}, strict=False)')
    report = load(model, checkpoint, rename={r"^blocks\.": "layers."}, strict=False)
    console.print(report)

    console.print("\n[bold]2.[/] sl.load(model, checkpoint)   [dim]# strict, no rename[/]")
    before = fingerprint(model)
    try:
        load(model, checkpoint)
    except LoadError as error:
        console.print(Panel(Text(f"structload.LoadError: {error}"), border_style="red", expand=False))
    after = fingerprint(model)
    verdict = "[green]unchanged[/]" if before == after else "[red]CHANGED[/]"
    console.print(
        f"model state before {before}, after {after}: {verdict} (nothing is written when a strict load fails)"
    )
    return 0 if before == after else 1
