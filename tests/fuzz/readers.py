"""The fuzz target shared by the hypothesis test and the atheris harness.

`check_file_bytes(data, suffix)` writes `data` to a file with that suffix,
opens it with structload, reads every tensor and loads it non-strictly into a
matching destination. Anything may happen to the bytes; the only acceptable
outcomes are success and a `SourceError` naming the file. Any other exception
is a bug.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

import structload as sl

CORPUS = Path(__file__).resolve().parent / "corpus"


def seeds() -> list[tuple[str, bytes]]:
    """``(suffix, bytes)`` for every file of the seed corpus."""
    return [(path.suffix, path.read_bytes()) for path in sorted(CORPUS.iterdir()) if path.is_file()]


def check_file_bytes(data: bytes, suffix: str) -> None:
    handle, name = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        _exercise(name)
    finally:
        os.unlink(name)


def _exercise(path: str) -> None:
    try:
        tree = sl.open(path)
        tensors = tree.tensors()
        for leaf in tensors.values():
            leaf.read()
        destination = {p: torch.zeros(t.shape, dtype=t.dtype) for p, t in sl.inspect(tree).items()}
        sl.load(destination, tree, strict=False)
    except sl.SourceError as error:
        assert path in str(error), f"a SourceError that does not name the file: {error}"
