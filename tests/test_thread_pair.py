"""The thread pair behind the two-thread decoding step: results in task order, tasks really concurrent, the caller
never waiting for a task the helper has not started, errors and grad mode handled."""

import os
import threading

import pytest
import torch

from avlformer.modeling.thread_pair import PairOrAlone, ThreadPair, _helper, _Work, split_range

WAIT_S = 10.0  # generous: only a broken pair waits this long


def test_split_range_covers_the_range_in_contiguous_near_equal_parts():
    assert split_range(12, 2) == [slice(0, 6), slice(6, 12)]
    assert split_range(30522, 2) == [slice(0, 15261), slice(15261, 30522)]
    assert split_range(5, 2) == [slice(0, 2), slice(2, 5)]
    assert split_range(1, 2) == [slice(0, 1)]  # never an empty part
    assert split_range(7, 1) == [slice(0, 7)]


def test_results_come_back_in_task_order_and_both_tasks_run_at_once():
    started = [threading.Event(), threading.Event()]
    threads = [None, None]

    def task(index):
        threads[index] = threading.get_ident()
        started[index].set()
        # Each task waits for the other to have started: only a pair that runs them concurrently finishes fast.
        assert started[1 - index].wait(WAIT_S), "the other task never started while this one ran"
        return torch.tensor(float(index))

    with torch.no_grad():
        results = ThreadPair(parallel=True).run([lambda: task(0), lambda: task(1)])
    assert [float(r) for r in results] == [0.0, 1.0]
    assert threads[0] != threads[1] and threading.get_ident() in threads


def test_the_caller_runs_every_task_itself_while_the_helper_is_busy():
    release, helper_started = threading.Event(), threading.Event()

    def occupy_helper():
        helper_started.set()
        release.wait(WAIT_S)

    blocker = _Work([occupy_helper])
    _helper().submit(blocker)
    assert helper_started.wait(WAIT_S)
    try:
        ran_on = []
        with torch.no_grad():
            results = ThreadPair(parallel=True).run(
                [lambda: ran_on.append(threading.get_ident()) or torch.zeros(1)] * 3)
        assert len(results) == 3 and ran_on == [threading.get_ident()] * 3
    finally:
        release.set()
        assert blocker.helper_free.wait(WAIT_S)


def test_a_failing_task_raises_in_the_caller_and_the_pair_keeps_working():
    caller_started = threading.Event()

    def slow_on_caller():
        caller_started.set()
        threading.Event().wait(0.2)  # let the helper take the other task
        return torch.zeros(1)

    def fails():
        raise ValueError("task failed")

    with torch.no_grad():
        with pytest.raises(ValueError, match="task failed"):
            ThreadPair(parallel=True).run([slow_on_caller, fails])
        assert [float(r) for r in ThreadPair(parallel=True).run([lambda: torch.ones(1), lambda: torch.ones(1)])] \
            == [1.0, 1.0]


def test_helper_tasks_run_at_one_thread_without_gradients():
    seen = {}
    gate = threading.Event()

    def on_caller():
        assert gate.wait(WAIT_S)
        return torch.zeros(1)

    def on_helper():
        seen["threads"], seen["grad"] = torch.get_num_threads(), torch.is_grad_enabled()
        seen["ident"] = threading.get_ident()
        gate.set()
        return torch.zeros(1)

    with torch.no_grad():
        ThreadPair(parallel=True).run([on_caller, on_helper])
    assert seen == {"threads": 1, "grad": False, "ident": seen["ident"]} and seen["ident"] != threading.get_ident()


def test_parallel_runs_need_no_grad_and_a_sequential_pair_runs_in_order():
    with pytest.raises(RuntimeError, match="without gradients"):
        ThreadPair(parallel=True).run([lambda: torch.zeros(1), lambda: torch.zeros(1)])
    order = []
    ThreadPair(parallel=False).run([lambda: order.append(0), lambda: order.append(1)])
    assert order == [0, 1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_helper():
    with torch.no_grad():
        ThreadPair(parallel=True).run([lambda: torch.zeros(1), lambda: torch.zeros(1)])  # the parent's helper runs
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: a pair whose tasks must run concurrently, as in the parent
        started = [threading.Event(), threading.Event()]

        def task(index):
            started[index].set()
            return started[1 - index].wait(WAIT_S)

        with torch.no_grad():
            ok = all(ThreadPair(parallel=True).run([lambda: task(0), lambda: task(1)]))
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(child, 0)
    assert answer == b"1"


def test_helper_tasks_take_the_callers_inference_mode():
    """Decoding under torch.inference_mode() (the inference pipeline) builds its caches as inference tensors;
    the helper's tasks write into them, which only inference mode allows."""
    gate = threading.Event()
    with torch.inference_mode():
        cache = torch.zeros(2, 4)

        def on_caller():
            assert gate.wait(WAIT_S)
            cache[0] += 1
            return cache[0]

        def on_helper():
            gate.set()
            cache[1] += 2
            return cache[1]

        ThreadPair(parallel=True).run([on_caller, on_helper])
    assert cache.tolist() == [[1.0] * 4, [2.0] * 4]
    with torch.no_grad():  # outside inference mode again: the helper's next task must not be in it
        seen = ThreadPair(parallel=True).run([lambda: gate.wait(WAIT_S) and torch.zeros(1),
                                              lambda: torch.tensor(torch.is_inference_mode_enabled())])
    assert not bool(seen[1])


def test_parallel_runs_refuse_cpu_autocast():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="autocast"):
            ThreadPair(parallel=True).run([lambda: torch.zeros(1), lambda: torch.zeros(1)])


def test_pair_or_alone_follows_the_faster_mode_and_probes_the_slower_one():
    schedule = PairOrAlone()
    choices = []

    def call(paired_s, alone_s):
        paired = schedule.choose()
        choices.append(paired)
        schedule.record(paired, paired_s if paired else alone_s)

    call(0.5, 0.07)
    call(0.5, 0.07)  # warm-up: on the pair, not timed
    assert choices == [True, True] and not schedule.seconds[True]
    for _ in range(8):
        call(0.04, 0.07)  # the pair is faster: the caller alone is tried on the fourth call only
    assert choices == [True, True, True, False] + [True] * 6
    call(0.3, 0.07)  # one slow call on the pair does not flip the choice
    call(0.04, 0.07)
    assert choices[-2:] == [True, True]
    for _ in range(6):
        call(0.11, 0.07)  # the second core is taken: after three slow calls the median passes the caller's
    # calls 13-18: two more on the pair, then the caller alone, the pair tried again on call 16 (every fourth)
    assert choices[-6:] == [True, True, False, True, False, False]
    for _ in range(16):
        call(0.04, 0.07)  # the spell ends: three good tries of the pair (calls 20, 24, 28) and it leads again
    assert choices[-16:] == [False, True, False, False, False, True, False, False, False, True,
                             True, True, True, False, True, True]  # call 32: the caller alone, tried again
