"""Independent calls run in worker processes, each with its share of the CPU's threads.

Small SAM2 models on a CPU spend most of a step in Python and in small tensor operations: a
second torch thread gains little (one-shot adaptation: 0.164 s per step on one thread, 0.179 s
on two), while two processes of one thread each do nearly twice the work. Processes are
spawned (no fork of a process holding threads) and each sets ``torch.set_num_threads`` to the
cores it may use divided by the workers, so two processes never spin against each other.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def worker_threads(workers: int) -> int:
    """The torch threads each of ``workers`` processes gets: the usable cores shared among them."""
    return max(1, usable_cores() // workers)


def in_processes(calls: int, workers: int) -> bool:
    """Whether :func:`run_calls` runs ``calls`` calls in worker processes (else here, in order)."""
    return workers > 1 and calls > 1


def run_calls(calls: Sequence[Callable[[], T]], workers: int, on_done: Callable[[int, T], None]) -> None:
    """Run every call; ``on_done(index, result)`` in this process as each one finishes.

    With ``workers == 1`` (or a single call) the calls run here, in order. Otherwise they run
    in ``workers`` spawned processes, started in order and reported as they finish; each call
    and its result must then pickle (a module-level function or a ``functools.partial`` of one).
    A call that raises cancels the calls not yet started, and its error is raised here. The
    workers are spawned: a script that calls this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    Example:
        >>> done = {}
        >>> run_calls([lambda: 1, lambda: 2], 1, done.__setitem__)
        >>> done
        {0: 1, 1: 2}
    """
    if not in_processes(len(calls), workers):
        for i, call in enumerate(calls):
            on_done(i, call())
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(worker_threads(workers),)) as pool:
        futures = {pool.submit(call): i for i, call in enumerate(calls)}
        try:
            for fut in concurrent.futures.as_completed(futures):
                on_done(futures[fut], fut.result())
        except BaseException:  # a failed call (or an interrupt): start nothing more
            for fut in futures:
                fut.cancel()
            raise


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
