"""The background writer: tasks run in order in one thread, the caller never waits for more than ``depth`` of
them, and a failure reaches the caller; on the caller's own error the tasks already handed over still finish."""

import threading
import time

import pytest

from medcf.outputs.background import BackgroundWriter


def test_tasks_run_in_order_in_one_background_thread():
    done, threads = [], set()

    def task(k):
        time.sleep(0.002 * (5 - k))  # later tasks are quicker: only the order of hand-over can keep them in line
        done.append(k)
        threads.add(threading.current_thread().name)

    with BackgroundWriter(depth=3) as output:
        for k in range(5):
            output.submit(task, k)
    assert done == [0, 1, 2, 3, 4]
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_the_caller_waits_once_depth_tasks_are_pending():
    release, started = threading.Event(), []

    def blocked(k):
        started.append(k)
        release.wait(5)

    output = BackgroundWriter(depth=2)
    output.submit(blocked, 0)
    output.submit(blocked, 1)
    waiter = threading.Thread(target=output.submit, args=(blocked, 2))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "a third task is not taken while two are pending"
    release.set()
    waiter.join(5)
    output.finish()
    assert started == [0, 1, 2]


def test_a_failed_task_fails_the_next_submit_or_the_finish():
    def fail():
        raise OSError("disk full")

    output = BackgroundWriter(depth=1)
    output.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        output.submit(lambda: None)
    output.finish()
    output = BackgroundWriter()
    output.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        output.finish()


def test_on_the_callers_error_the_tasks_handed_over_finish_and_the_callers_error_is_kept():
    done = []
    with pytest.raises(KeyError, match="decoding failed"):
        with BackgroundWriter(depth=3) as output:
            output.submit(lambda: (time.sleep(0.05), done.append("written")))
            output.submit(lambda: 1 / 0)  # a second failure must not hide the caller's
            raise KeyError("decoding failed")
    assert done == ["written"]


def test_depth_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="depth: 0 must be an integer >= 1"):
        BackgroundWriter(depth=0)


def test_without_a_background_thread_each_task_runs_at_once_in_the_callers_thread():
    ran = []
    with BackgroundWriter(background=False) as output:
        output.submit(lambda k: ran.append((k, threading.current_thread().name)), 1)
        assert ran == [(1, threading.current_thread().name)], "ran before submit returned, in this thread"
        with pytest.raises(OSError, match="disk full"):
            output.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
