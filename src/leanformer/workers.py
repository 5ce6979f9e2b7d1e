"""Ordered results from spawned worker processes: :func:`in_workers` maps a function over a (possibly endless)
stream with a bounded look-ahead. Used where CPU work would otherwise hold up a GPU: the reference trainer's batches
and evaluation prompts, the sweep harness's prompts."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os


def _worker_start(initializer, initargs: tuple):
    """In each worker: exit as soon as the parent process is gone, then ``initializer(*initargs)``. A trainer killed
    mid-run (SIGKILL, out of memory) would otherwise leave its workers waiting for work forever, holding its output
    pipes open: a caller reading them would never see their end."""
    import threading

    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()
    initializer(*initargs)


def in_workers(fn, items, workers: int, initializer, initargs: tuple, ahead: int | None = None):
    """``fn(item)`` for each of ``items`` in order, computed by ``workers`` spawned processes (each set up once by
    ``initializer(*initargs)``) with at most ``ahead`` (default ``4 * workers``) submitted in advance: ``items`` may
    be endless, as training's data steps are. Closing the generator stops the workers, dropping queued work.

    A ``ProcessPoolExecutor``, not a ``multiprocessing.Pool``: a worker that dies or an initializer that raises fails
    the caller with ``BrokenProcessPool`` (the pool respawns such workers forever and its ``get`` waits forever), and
    stopping cannot deadlock on a large result a worker is still sending (``Pool.terminate`` can)."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    ahead = ahead or 4 * workers
    items = iter(items)
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_start,
                               initargs=(initializer, initargs))
    try:
        pending: deque = deque()
        while True:
            pending.extend(pool.submit(fn, item) for item in itertools.islice(items, ahead - len(pending)))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
