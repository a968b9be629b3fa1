"""The captioning queue (docs/api.md, "Load"): at most ``size`` requests accepted at once, more get a 503 with a
``Retry-After``; jobs run on two worker threads, so one clip is decoded while the model works on another.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Callable, TypeVar

from avlformer.serve import RequestError

T = TypeVar("T")

WORKERS = 2
FIRST_GUESS_S = 5.0           # Retry-After basis before any caption has been timed
RECENT_WEIGHT = 0.3           # weight of the latest caption in the running mean of caption times


class CaptionQueue:
    def __init__(self, size: int):
        self.size = size
        self.accepted = 0             # requests accepted and not yet finished (running or waiting)
        self._counter = threading.Lock()
        self._mean_s = FIRST_GUESS_S
        self._closed = False
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="avlformer-caption")

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._mean_s * max(1, self.accepted) / WORKERS))

    async def run(self, job: Callable[[], T], cleanup: Callable[[], None] | None = None) -> T:
        """``job()`` on a worker, or a 503 when the queue is full; ``cleanup`` runs once the job is over or
        dropped."""
        with self._counter:
            if self.accepted >= self.size:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE,
                                   f"the server is busy ({self.accepted} videos queued for captioning); "
                                   f"try again in a moment", headers={"Retry-After": str(self.retry_after_s())})
            self.accepted += 1
        try:
            future = self._pool.submit(self._timed, job)
        except RuntimeError:  # the pool is shut down
            self._finished(cleanup)
            raise self._stopping() from None
        future.add_done_callback(lambda _: self._finished(cleanup))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if self._closed and future.cancelled():  # dropped unstarted by ``close``, not this request cancelled
                raise self._stopping() from None
            raise

    def _stopping(self) -> RequestError:
        return RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is stopping",
                            headers={"Retry-After": str(self.retry_after_s())})

    def _timed(self, job: Callable[[], T]) -> T:
        start = time.monotonic()
        try:
            return job()
        finally:
            took = time.monotonic() - start
            self._mean_s = (1 - RECENT_WEIGHT) * self._mean_s + RECENT_WEIGHT * took

    def _finished(self, cleanup: Callable[[], None] | None) -> None:
        try:
            if cleanup is not None:
                cleanup()
        finally:
            with self._counter:
                self.accepted -= 1

    def close(self) -> None:
        """Drop the waiting jobs (their cleanups run); the one running finishes on its own thread."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

