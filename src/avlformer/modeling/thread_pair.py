"""A decoding step's independent halves on two CPU threads, each half at one intra-op thread.

A KV-cached decoding step at batch 1 is bound by streaming its weights from memory (docs/architecture.md,
"Decoding speed"), and one core streams about half of what two do. Letting torch's intra-op pool split each of
the step's ~100 small products over two threads was measured to lose on a busy machine: every product ends in an
OpenMP barrier, and a descheduled worker stalls each one for a scheduler slice. Here the step is instead cut into
about 25 pairs of larger, independent tasks (head groups of a layer's attention, halves of its feed-forward, halves
of the vocabulary), and each pair runs on the calling thread and one helper thread. The caller never waits for a
task the helper has not started: it takes that task itself, so a helper that is not scheduled costs nothing but
the one task it may already be running.

Which thread runs a task does not change its result: every task runs at one intra-op thread, so a step cut in
pairs gives the same bits whether the helper ran some of its tasks or none.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import statistics
import threading
from typing import Callable, Sequence

import torch


class ThreadPair:
    """Runs a list of independent tasks on the calling thread and, when ``parallel``, on the process's helper
    thread as well (the caller claims first; either thread claims the next unclaimed task when it is free).

    Grad mode, inference mode and autocast are per thread: the helper runs under ``no_grad`` and takes the
    caller's inference mode, so tasks may update the caller's inference tensors (the decoding caches built
    under ``torch.inference_mode()``); parallel runs need gradients off and CPU autocast off."""

    def __init__(self, parallel: bool):
        self.parallel = parallel

    def run(self, tasks: Sequence[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
        if not self.parallel or len(tasks) < 2:
            return [task() for task in tasks]
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            raise RuntimeError("ThreadPair runs tasks in parallel only without gradients (torch.no_grad()) and "
                               "without CPU autocast")
        work = _Work(tasks, torch.is_inference_mode_enabled())
        _helper().submit(work)
        done = 0
        try:
            done = work.claim_and_run()
        finally:
            if done < len(tasks):  # the helper claimed the rest (or the caller failed): wait until it is free
                work.helper_free.wait()
        if work.error is not None:
            raise work.error
        return work.results


class PairOrAlone:
    """Chooses, call by call, whether a caller's cut work runs on the pair or on the caller alone, by which has
    been faster lately. Either way the tasks and their bits are the same (each runs at one intra-op thread, on
    whichever thread), so the choice changes only the time. A pair is slower than the caller alone when the second
    core is taken away: on a shared virtual machine the hypervisor can stop the helper's virtual CPU in the middle
    of a task (steal time), and the caller then waits for it; measured on our 2-core machine, a paper-size step
    took 106 ms on the pair against 69 ms alone in such a spell, and 43-57 against 68-81 ms outside one.

    Each mode is judged by the median of its last ``SAMPLES`` times, so one slow call (a single steal, or the
    first calls of the compiled tasks, which TorchScript profiles) does not flip the choice, a lasting change does.
    The first ``WARM_UP`` calls run on the pair and are not timed. The other mode is tried again now and then:
    the caller alone on call ``WARM_UP + 2`` and then every ``PROBE_ALONE_EVERY`` calls while the pair is ahead
    (rarely, as each try is a slower call), the pair every ``PROBE_PAIR_EVERY`` calls while it is behind (so the
    end of a spell is noticed within a few calls)."""

    SAMPLES = 5
    WARM_UP = 2
    PROBE_ALONE_EVERY = 32
    PROBE_PAIR_EVERY = 4

    def __init__(self):
        self.seconds: dict[bool, collections.deque] = {mode: collections.deque(maxlen=self.SAMPLES)
                                                       for mode in (True, False)}
        self.calls = 0

    def choose(self) -> bool:
        """True: run the next call on the pair."""
        self.calls += 1
        if self.calls <= self.WARM_UP:
            return True
        paired, alone = (statistics.median(self.seconds[mode]) if self.seconds[mode] else None
                         for mode in (True, False))
        if alone is None or paired is None or paired <= alone:
            return not (self.calls == self.WARM_UP + 2 or self.calls % self.PROBE_ALONE_EVERY == 0)
        return self.calls % self.PROBE_PAIR_EVERY == 0

    def record(self, paired: bool, seconds: float) -> None:
        if self.calls > self.WARM_UP:
            self.seconds[paired].append(seconds)


class _Work:
    def __init__(self, tasks: Sequence[Callable[[], torch.Tensor]], inference_mode: bool = False):
        self.tasks = tasks
        self.inference_mode = inference_mode  # the caller's, applied on the helper
        self.results: list = [None] * len(tasks)
        self.claims = itertools.count()  # next() is atomic under the GIL: each index goes to one thread
        self.helper_free = threading.Event()
        self.error: BaseException | None = None

    def claim_and_run(self) -> int:
        """Run unclaimed tasks until none is left; returns how many this thread ran."""
        ran = 0
        while (index := next(self.claims)) < len(self.tasks):
            self.results[index] = self.tasks[index]()
            ran += 1
        return ran


class _Helper:
    """One daemon thread per process, shared by every decoding caller (each submission carries its own state,
    so concurrent callers only compete for the helper, never for each other's tasks)."""

    def __init__(self):
        self.pid = os.getpid()
        self.pending: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="avlformer-thread-pair", daemon=True).start()

    def submit(self, work: _Work) -> None:
        self.pending.put(work)

    def _serve(self) -> None:
        torch.set_num_threads(1)  # OpenMP's count is per thread: the callers keep theirs
        while True:
            work = self.pending.get()
            try:
                # inference_mode(False) turns grad mode back on: no_grad inside it keeps the helper gradient-free.
                with torch.inference_mode(work.inference_mode), torch.no_grad():
                    work.claim_and_run()
            except BaseException as error:  # noqa: BLE001 - handed to the caller, which raises it
                work.error = error
            finally:
                work.helper_free.set()


_HELPER: _Helper | None = None
_HELPER_LOCK = threading.Lock()


def _helper() -> _Helper:
    global _HELPER
    with _HELPER_LOCK:
        if _HELPER is None or _HELPER.pid != os.getpid():  # a forked child has no copy of the parent's thread
            _HELPER = _Helper()
        return _HELPER


def split_range(size: int, parts: int) -> list[slice]:
    """``[0, size)`` cut into ``parts`` contiguous near-equal slices (fewer when ``size`` is smaller)."""
    parts = max(1, min(parts, size))
    bounds = [size * index // parts for index in range(parts + 1)]
    return [slice(start, end) for start, end in zip(bounds, bounds[1:])]
