"""A MultiThreadedExecutor that submits each ready callback to its thread pool once.

rclpy 9.1 (the Kilted wheels `make` installs) yields every task that waits in the pool's queue again each time its
wait loop wakes, and `MultiThreadedExecutor` submits it again (ros2/rclpy#1452, fixed upstream in #1547 after this
release). Every resubmission wakes the loop once more, so the spin thread holds the GIL in a busy loop over a list of
thousands of duplicate futures while the workers that should run the callbacks wait for the GIL. Measured on the
2-core test machine (test/test_ros_executor.py's load: a 100 Hz timer, a 200 Hz subscription and a 10 Hz timer in
3 s): rclpy's executor ran 22-29 of ~900 callbacks (6-10 of 300 timer ticks) for 14,000-14,600 submissions; this
one ran all 898 with 898 submissions. In the policy node at 20 Hz (tiny test bundle, sim over DDS): 3,600-6,900
queued duplicates of 4 tasks at any moment, the node at ~100% of a core and its control timer at 7-10 Hz; with
this executor, 8% of a core and 20 Hz.

`ThreadedExecutor` keeps rclpy's executor and changes one thing: a task that is already in the pool's queue (submitted,
not yet started by a worker) is not submitted again; the spin thread waits (at most START_WAIT_S) for a worker to
start it instead of spinning. A coroutine callback suspended on a future has been started, so it is resubmitted when
it is ready to resume, as before.
"""
from __future__ import annotations

import threading

from rclpy.exceptions import InvalidHandle
from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)


class ThreadedExecutor(MultiThreadedExecutor):
    """rclpy's MultiThreadedExecutor, minus the resubmission of queued tasks (see the module docstring)."""

    START_WAIT_S = 0.05  # longest wait for a worker to start a task that rclpy yields again

    def __init__(self, num_threads: int | None = None, *, context=None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        self._queued_lock = threading.Lock()
        # id() of each task submitted to the pool that no worker has started yet -> set when one starts it
        self._queued: dict[int, threading.Event] = {}
        self._running: list = []  # submitted tasks not yet seen done (their exceptions are raised here)
        self.submissions = 0  # tasks handed to the pool, for tests and diagnostics
        self.skips = 0  # times a task still in the pool's queue was yielded again (and not resubmitted)

    def _start(self, task) -> None:
        with self._queued_lock:
            started = self._queued.pop(id(task), None)
        if started is not None:
            started.set()
        task()

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            task, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._queued_lock:
            started = self._queued.get(id(task))
            if started is None:
                self._queued[id(task)] = threading.Event()
        if started is not None:
            # A worker will run it. rclpy yields it again until one starts it, and resubmitting (or returning at
            # once) makes this loop spin on the GIL the workers need: wait, briefly, for one to start it.
            self.skips += 1
            started.wait(self.START_WAIT_S)
            return
        self.submissions += 1
        self._executor.submit(self._start, task)
        if task not in self._running:
            self._running.append(task)
        self._raise_finished()

    def _raise_finished(self) -> None:
        """Forget finished tasks; raise a callback's exception, as rclpy does. InvalidHandle is dropped: the entity
        was destroyed after the wait set saw it ready (a node destroyed while the executor spins), which rclpy's
        handlers already ignore for timers, subscriptions, clients and services but not for waitables such as QoS
        event handlers."""
        for done in [t for t in self._running if t.done()]:
            self._running.remove(done)
            try:
                done.result()
            except InvalidHandle:
                pass
