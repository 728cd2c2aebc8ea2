"""The process-wide resources a load uses, and the inventory of all process-wide state.

structload keeps no hidden global state. Three things are shared by the whole
process and live here:

- `collector_paused`: the cyclic garbage collector is paused while a load runs
  (`load` enters it around planning and writing; loads on several threads
  pause it once, and the last to finish resumes it);
- `destination_lock`: one lock per destination object, held by a load from
  planning to its last write, so two loads into the same model (from two
  threads) run one after the other instead of mixing their tensors;
- `ReaderPool`: the threads that read big file ranges in parallel. File
  handles hold the pool they use (`READERS` unless given another); it starts
  its threads on first use and starts afresh in a forked child, which inherits
  none of its parent's threads (no fork hook needed).

Everything else a load shares with the process lives beside the code that uses
it, and `PROCESS_WIDE_STATE` lists it all (a test scans the package and checks
that nothing else exists): the second reader pool for URLs, the per-thread
identity checks, the recorder of modules' own loading code, and transformers'
declared conversions read once per kind of model. There is no registry of open files: a load's read session
finds the files from what it reads, and a source tree carries what its source
learned (`structload.sources.tree.SourceInfo`). Two
patches of torch are made for a bounded time only: ``nn.Module.register_parameter``
inside ``init_empty_weights()`` (for the thread that entered it), and
``nn.Module._load_from_state_dict`` while a plan records a module's own loading
code (reference-counted under a lock, restored when the last recording ends).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration of a load.

    A load allocates a few small objects per tensor and none of them form
    cycles; with a big model alive, every collection those allocations trigger
    rescans hundreds of thousands of torch objects, which doubled the time of a
    20,000-tensor load. Reference counting still frees everything as usual. The
    collector is re-enabled on exit (if it was enabled on entry), whatever happens.
    """
    global _pausing, _resume
    with _pause_lock:
        if _pausing == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pausing += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pausing -= 1
            if _pausing == 0 and _resume:
                gc.enable()


_pause_lock = threading.Lock()
_pausing = 0  # loads running now, on any thread
_resume = False  # whether the collector was enabled when the first of them began


@contextlib.contextmanager
def destination_lock(dst: object) -> Iterator[None]:
    """Hold the lock of the destination `dst` (one per object, by identity) for the block: loads
    into the same model from several threads are serialised, so none ever sees another's
    half-written tensors or writes into a tensor another is writing. Re-entrant: a load that
    loads into its own destination again (from a load hook) does not wait for itself.

    >>> model = object()
    >>> with destination_lock(model), destination_lock(model):
    ...     len(_destinations)
    1
    >>> len(_destinations)  # forgotten once no load holds it
    0
    """
    key = id(dst)  # `dst` is alive for the block: its id names no other object meanwhile
    with _destinations_lock:
        lock, users = _destinations.get(key, (None, 0))
        lock = lock or threading.RLock()
        _destinations[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _destinations_lock:
            lock, users = _destinations[key]
            if users == 1:
                del _destinations[key]
            else:
                _destinations[key] = (lock, users - 1)


_destinations_lock = threading.Lock()
_destinations: dict[int, tuple[threading.RLock, int]] = {}  # id(destination) -> (its lock, loads using it)


class ReaderPool:
    """A lazily started thread pool for parallel positioned reads, safe across ``fork``.

    >>> pool = ReaderPool(workers=2)
    >>> pool.submit(sum, [1, 2]).result(), pool.workers
    (3, 2)
    """

    def __init__(self, workers: int | None = None):
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._executor: ThreadPoolExecutor | None = None
        self._owner_pid = -1
        self._lock = threading.Lock()

    def submit(self, fn: Callable, *args) -> Future:
        return self._current().submit(fn, *args)

    def _current(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        with self._lock:
            if self._executor is None or self._owner_pid != pid:  # first use, or a forked child
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="structload-read")
                self._owner_pid = pid
            return self._executor


#: The pool file handles use unless given another.
READERS = ReaderPool()


#: Every piece of process-wide state in structload, ``"module.name": what it holds``.
PROCESS_WIDE_STATE = {
    "structload._runtime._pause_lock": "guards the count of loads that paused the collector",
    "structload._runtime._destinations_lock": "guards the table of per-destination locks",
    "structload._runtime._destinations": "id(destination) -> its lock and the loads using it",
    "structload._runtime.READERS": "the reader thread pool for local files",
    "structload.sources._io.remote.REMOTE_READERS": "the reader thread pool for URLs (more, smaller requests)",
    "structload.sources._io.identity._LOAD": "per thread: the identities the running load checked already",
    "structload._plan.customised._RECORDING": "per thread: the module whose loading code is being recorded",
    "structload._plan.customised._RECORDERS_LOCK": "guards the patch of nn.Module._load_from_state_dict",
    "structload.integrations._declarations._declarations": "transformers' declared transforms, per kind of model",
}
