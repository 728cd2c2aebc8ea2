"""Optimizer state by parameter path: `optimizer_state` and `load_optimizer` (API.md section 13).

PyTorch pairs optimizer state with parameters by position; structload keeps
it as a tree that mirrors the model, like Optimisers.jl, and loads it through
the same pipeline as the weights (rename, convert, align, include / exclude /
filter, the plan, the rules, the report), matched on parameter paths.

- `_tree.py`     the optimizer's parameters by path, and `optimizer_state`
- `_order.py`    which path each index of a torch ``state_dict()`` stands for
- `_sources.py`  every source kind -> ``{param_path: {state_key: leaf}}``
- `_fuse.py`     rename and converters on parameter paths, one state key at a time
- `_dest.py`     the destination: a tree of the state tensors to write, then installed
- `_fast.py`     the fast lane: resuming the same model from memory, checked once per parameter
- `_report.py`   `OptimizerReport`: a summary that counts state entries and their parameters
- `_load.py`     `load_optimizer`, as numbered steps
"""

from ._load import load_optimizer
from ._tree import optimizer_state

__all__ = ["load_optimizer", "optimizer_state"]
