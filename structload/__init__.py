"""structload: load PyTorch weights structurally, path by path, in place.

>>> import torch, structload as sl
>>> report = sl.load(torch.nn.Linear(3, 2), {"weight": torch.zeros(2, 3), "bias": torch.ones(2)})
>>> report.ok
True
"""

from . import adapt, convert
from ._align.aligner import align
from ._align.alignment import Alignment, Ambiguity, Match
from ._empty import init_empty_weights
from ._inspect import Diff, TensorInfo, diff, inspect
from ._load import load
from ._rename import optional
from ._report import Adapted, Cast, Converted, LoadError, LoadReport, Mismatch, Problem, SourceError
from ._state import state
from ._verify import Verification, verify
from .optim import load_optimizer, optimizer_state
from .sources.formats.pickled import Pickled
from .sources.tree import SourceTree
from .sources.tree import open_source as open

__all__ = [
    "Adapted",
    "Alignment",
    "Ambiguity",
    "Cast",
    "Converted",
    "Diff",
    "LoadError",
    "LoadReport",
    "Match",
    "Mismatch",
    "Pickled",
    "Problem",
    "SourceError",
    "SourceTree",
    "TensorInfo",
    "Verification",
    "adapt",
    "align",
    "convert",
    "diff",
    "init_empty_weights",
    "inspect",
    "load",
    "load_optimizer",
    "open",
    "optimizer_state",
    "optional",
    "state",
    "verify",
]
__version__ = "0.1.0"
