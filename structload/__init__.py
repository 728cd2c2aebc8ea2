"""structload: load PyTorch weights structurally, path by path, in place.

>>> import torch, structload as sl
>>> report = sl.load(torch.nn.Linear(3, 2), {"weight": torch.zeros(2, 3), "bias": torch.ones(2)})
>>> report.ok
True
"""

from ._load import load
from ._report import Cast, LoadError, LoadReport, Mismatch, Problem, SourceError

__all__ = ["Cast", "LoadError", "LoadReport", "Mismatch", "Problem", "SourceError", "load"]
__version__ = "0.1.0"
