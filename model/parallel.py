"""Worker processes that stop when the user does.

A terminal's Ctrl-C reaches every process of the foreground group: without care each worker
dies with a traceback of its own and the parent waits for work that will never finish.  Here
the workers ignore SIGINT, the parent takes the KeyboardInterrupt, terminates the pool and
passes the interrupt on; nothing is left running.  (Sweeps across machines are Dask's, in
``pgvirt.emulator``; this is one process's ``--jobs``.)
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _worker_init(init: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init is not None:
        init()


def _chunk(fn: Callable[[T], R], items: list[T]) -> list[R]:
    return [fn(w) for w in items]


def imap(fn: Callable[[T], R], work: Iterable[T], jobs: int, ordered: bool = True,
         initializer: Callable[[], None] | None = None, chunksize: int = 1) -> Iterator[R]:
    """``fn`` over ``work`` in ``jobs`` forked processes, ``chunksize`` items a task, results as
    they come (in order when ``ordered``).  An exception in the parent (Ctrl-C among them) or
    leaving the loop early terminates the workers at once; a worker that dies (an emulator or
    solver aborting its process) raises ``BrokenProcessPool`` instead of leaving the loop
    waiting for ever."""
    ex = ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork"), initializer=_worker_init,
                             initargs=(initializer,))
    items = list(work)
    try:
        futures = [ex.submit(_chunk, fn, items[k:k + chunksize]) for k in range(0, len(items), chunksize)]
        for f in (futures if ordered else as_completed(futures)):
            yield from f.result()
    except BaseException:
        # The executor has no public way to stop running work: end its processes directly.
        procs = list(getattr(ex, "_processes", {}).values())
        for proc in procs:
            proc.terminate()
        for proc in procs:      # dead before the caller cleans up after them
            proc.join(1.0)
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()
