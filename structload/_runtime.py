"""The process-wide resources a load uses, all in one place.

structload keeps no hidden global state. Two things are shared by the whole
process, and both are here, explicit and documented:

- `collector_paused`: the cyclic garbage collector is paused while a load runs
  (`load` enters it around planning and writing);
- `ReaderPool`: the threads that read big file ranges in parallel. File
  handles hold the pool they use (`READERS` unless given another); it starts
  its threads on first use and starts afresh in a forked child, which inherits
  none of its parent's threads (no fork hook needed).
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
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
