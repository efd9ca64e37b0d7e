"""Running independent jobs of an experiment in worker processes, one torch thread each.

Each worker is a fresh (spawned) Python process that sees the caller's ``$WORKBENCH_CACHE``
and runs torch on one intra-op thread, so a job gives the same numbers in a worker as in the
caller's process under ``torch_threads(1)``. Jobs are module-level functions (a spawned
process imports them by name) and return what pickles.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

from workbench.config import CACHE_ENV


def default_workers() -> int:
    """Processes an experiment uses: one per core, at most two."""
    return max(1, min(2, os.cpu_count() or 1))


def _start_worker(cache_root: str | None) -> None:
    if cache_root is not None:
        os.environ[CACHE_ENV] = cache_root
    import torch

    torch.set_num_threads(1)


def run_in_workers(job: Callable, jobs: Sequence[tuple], *, workers: int,
                   progress: bool = False, desc: str = "jobs",
                   first: tuple[Callable, Sequence[tuple]] | None = None) -> list:
    """``job(*args)`` for each ``args`` of ``jobs``, in ``workers`` processes (in this one,
    one after the other, when ``workers`` is 1); results in the order of ``jobs``. ``first``:
    ``(other_job, other_jobs)`` run to the end, in the same processes, before ``jobs`` start
    (what they all need: a model to train once, say); their results are dropped. A job's
    exception is raised here."""
    from tqdm.auto import tqdm

    first_job, first_jobs = first if first is not None else (None, ())
    if workers <= 1 or len(jobs) + len(first_jobs) <= 1:
        for args in first_jobs:
            first_job(*args)
        return [job(*args) for args in tqdm(jobs, desc=desc, disable=not progress)]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, max(len(jobs), len(first_jobs))), mp_context=spawn,
                             initializer=_start_worker,
                             initargs=(os.environ.get(CACHE_ENV),)) as pool:
        for future in [pool.submit(first_job, *args) for args in first_jobs]:
            future.result()
        futures = [pool.submit(job, *args) for args in jobs]
        for _ in tqdm(as_completed(futures), total=len(futures), desc=desc,
                      disable=not progress):
            pass
        return [future.result() for future in futures]
