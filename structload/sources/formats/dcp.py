"""``torch.distributed.checkpoint`` (DCP) directories: metadata gives shapes and dtypes; data is
read through DCP's own reader, only the chunks a block needs.

A DCP directory holds ``.metadata`` and one ``*.distcp`` file per writing rank;
a tensor may be split into chunks written by different ranks. Loading a block
(a rank's shard of a sharded destination, or the whole tensor) asks DCP's
``FileSystemReader`` for exactly the chunks that overlap it, written straight
into the destination. Non-tensor entries (bytes) are left out of the tree.
"""

from __future__ import annotations

import functools
import os

import torch

from ..._report import SourceError
from .._io import paths
from .._io.identity import Identity, before_read
from .._io.remote import is_url
from .._leaves import SourceTensor
from ..nesting import insert, numbered_in_order
from ..tree import SourceInfo, SourceTree


def is_dcp_directory(path: str) -> bool:
    return paths.isfile(paths.join(path, ".metadata"))


class DCPCheckpoint:
    """One DCP directory: its reader, set up once. DCP's reader opens its files by path at each
    read, so the identity of every file of a local directory is recorded at open and checked
    by a load (`check_unchanged`) like a file's (`structload.sources._io.identity`)."""

    def __init__(self, path: str):
        from torch.distributed.checkpoint import FileSystemReader

        self.path = path
        self.reader: FileSystemReader
        try:
            if is_url(path):  # torch's own fsspec reader for DCP on remote storage
                from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

                self.reader = FsspecReader(path)
            else:
                self.reader = FileSystemReader(path)
            self.files = {} if is_url(path) else _identities(path)
            self.metadata = self.reader.read_metadata()
            self.reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        except Exception as error:  # pickle, OSError, ...: never raw
            raise SourceError(f"{path}: cannot read the DCP metadata ({type(error).__name__}: {error})") from None

    def check_unchanged(self) -> None:
        """A `SourceError` naming the directory if a file of it changed, came or went since open."""
        if is_url(self.path):
            return
        now = _identities(self.path)
        changed = sorted(name for name in now.keys() | self.files.keys() if now.get(name) != self.files.get(name))
        if changed:
            raise SourceError(
                f"{self.path}: the DCP checkpoint changed since it was opened ({', '.join(changed)}); open it again",
                path="",
            )

    def read_block(self, fqn: str, target: torch.Tensor, starts, sizes) -> None:
        """Fill `target` with the block ``starts .. starts + sizes`` of tensor `fqn`."""
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        before_read(self)  # in a load, the directory is checked before its first read
        entry = self.metadata.state_dict_metadata[fqn]
        if not isinstance(entry, TensorStorageMetadata):
            raise SourceError(f"{self.path}: '{fqn}' is stored as bytes, not as a tensor")
        chunk = ChunkStorageMetadata(offsets=torch.Size(starts), sizes=torch.Size(sizes))
        items = create_read_items_for_chunk_list(fqn, entry, [chunk])
        try:
            self.reader.read_data(LoadPlan(items), _planner_class()(target)).wait()
        except SourceError:
            raise
        except Exception as error:
            raise SourceError(f"{self.path}: reading '{fqn}' failed ({type(error).__name__}: {error})") from None


def _identities(directory: str) -> dict[str, Identity]:
    """The identity of every file of a local DCP directory, by name."""
    try:
        entries = list(os.scandir(directory))
    except OSError as error:
        raise SourceError(f"{directory}: cannot list the DCP directory ({error.strerror})", path="") from None
    return {e.name: Identity.of(e.stat()) for e in entries if e.is_file()}


@functools.cache
def _planner_class():
    """The smallest DCP LoadPlanner: each read item lands in its view of one target tensor.
    Built on first use: importing torch.distributed.checkpoint costs over half a second."""
    from torch.distributed.checkpoint.planner import LoadPlanner

    class IntoTarget(LoadPlanner):
        def __init__(self, target: torch.Tensor):
            self.target = target

        def set_up_planner(self, *args, **kwargs):
            pass

        def create_local_plan(self):
            raise NotImplementedError

        def create_global_plan(self, plans):
            return plans

        def finish_plan(self, plan):
            return plan

        def load_bytes(self, read_item, value):
            raise SourceError(f"'{read_item.dest_index.fqn}' is stored as bytes, not as a tensor")

        def resolve_tensor(self, read_item):
            view = self.target
            for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
                view = view.narrow(dim, offset, length)
            return view

        def commit_tensor(self, read_item, tensor):
            destination = self.resolve_tensor(read_item)
            if tensor.data_ptr() != destination.data_ptr():  # the reader handed out a copy
                destination.copy_(tensor)

    return IntoTarget


class DCPTensor(SourceTensor):
    """A tensor of a DCP checkpoint, read (or sliced) through DCP's reader."""

    __slots__ = ("checkpoint", "fqn")

    def __init__(self, checkpoint: DCPCheckpoint, fqn: str, shape, dtype):
        self.checkpoint, self.fqn = checkpoint, fqn
        self.shape, self.dtype = tuple(shape), dtype

    def read(self) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=self.dtype)
        self.checkpoint.read_block(self.fqn, out, (0,) * len(self.shape), self.shape)
        return out

    def read_into(self, target: torch.Tensor) -> None:
        self.read_slice_into(target, (0,) * len(self.shape), self.shape)

    def read_slice_into(self, target: torch.Tensor, starts, sizes) -> None:
        direct = target.is_contiguous() and target.dtype == self.dtype and target.device.type == "cpu"
        out = target if direct else torch.empty(tuple(sizes), dtype=self.dtype)
        self.checkpoint.read_block(self.fqn, out, starts, sizes)
        if not direct:
            target.copy_(out)

    def same_data(self, other: SourceTensor) -> bool:
        return self is other or (
            isinstance(other, DCPTensor) and (other.checkpoint, other.fqn) == (self.checkpoint, self.fqn)
        )


def open_dcp(path: str) -> SourceTree:
    """The source tree of a DCP directory, from its metadata alone."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    checkpoint = DCPCheckpoint(path)
    tree: dict = {}
    for fqn, entry in checkpoint.metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            insert(tree, fqn, DCPTensor(checkpoint, fqn, entry.size, entry.properties.dtype))
    return SourceTree(numbered_in_order(tree), SourceInfo(path, "dcp", (checkpoint,)))
