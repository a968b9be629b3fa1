"""Clip jobs in worker processes: a worker crash breaks the pool, so the jobs in flight are rerun one at a time and
the crash names its file. Pools are shut down before returning, and workers exit when prepare's process dies.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import threading
import time
from typing import Callable

from avlformer.data.prepare.clip_work import ClipJob

PARENT_POLL_SECONDS = 0.5


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # the parent is gone: nobody will collect this worker's results


def _watch_parent(parent_pid: int) -> None:
    """Pool initializer: a daemon thread ends the worker once its parent is gone (re-parented to init)."""
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="parent-watch").start()


def _run_in_pool(jobs: list[ClipJob], workers: int, work: Callable[[ClipJob], dict], results: dict,
                 progress) -> list[ClipJob]:
    """Run ``jobs`` with at most ``2 * workers`` in flight. If a worker dies, return the jobs that were in flight
    then: one of them is the culprit."""
    pending = iter(jobs)
    in_flight: dict[futures.Future, ClipJob] = {}
    executor = futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        while True:
            while len(in_flight) < 2 * workers:
                job = next(pending, None)
                if job is None:
                    break
                in_flight[executor.submit(work, job)] = job
            if not in_flight:
                return []
            done, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job = in_flight.pop(future)
                try:
                    results[job.clip_id] = future.result()
                except futures.process.BrokenProcessPool:
                    return [job] + list(in_flight.values())
                progress.update(1)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def run_clips(jobs: list[ClipJob], workers: int, work: Callable[[ClipJob], dict],
              crashed: Callable[[ClipJob], dict], progress) -> dict[str, dict]:
    """``clip id -> work(job)`` for every job; ``crashed(job)`` for a job that crashed its worker."""
    results: dict[str, dict] = {}
    if workers <= 1:
        # In-process: simplest to debug; finished clips are on disk, so even a hard crash loses only the current one.
        for job in jobs:
            results[job.clip_id] = work(job)
            progress.update(1)
        return results
    remaining = jobs
    while remaining:
        suspects = _run_in_pool(remaining, workers, work, results, progress)
        for job in suspects:
            if job.clip_id not in results and _run_in_pool([job], 1, work, results, progress):
                results[job.clip_id] = crashed(job)
                progress.update(1)
        remaining = [job for job in remaining if job.clip_id not in results]
    return results
