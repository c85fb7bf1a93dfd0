"""Threads that become an exec's tracer, kept for the next exec.

Every ptrace request for a tracee must come from the thread that attached, so each held
exec gets a thread of its own for as long as it is traced. Starting a Python thread costs
the decision loop ~0.45 ms (Thread.start waits until the new thread runs and takes the
GIL); with an exec checked in its exec stop on every allowed exec, that was half of what
an exec cost. Idle threads wait here for the next job instead.

A job returns whether its thread is clean: no tracee left attached and no exit of one left
to collect. A thread that is not clean ends, and the kernel detaches whatever it still
traced (a tracer's tracees are released when it exits).
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

MAX_IDLE = 8            # idle threads kept beyond this many end


class TracerPool:
    def __init__(self, name: str = "aarm-exec-tracer"):
        self._name = name
        self._lock = threading.Lock()
        self._jobs: deque[Callable[[], bool]] = deque()
        self._idle = 0
        self._wake = threading.Condition(self._lock)
        self._started = 0

    def submit(self, job: Callable[[], bool]) -> None:
        """Run job() in an idle thread, or a new one when none is idle."""
        with self._lock:
            self._jobs.append(job)
            if self._idle > len(self._jobs) - 1:
                self._wake.notify()
                return
            self._started += 1
            name = f"{self._name}-{self._started}"
        threading.Thread(target=self._worker, name=name, daemon=True).start()

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    if self._idle >= MAX_IDLE:
                        return
                    self._idle += 1
                    self._wake.wait()
                    self._idle -= 1
                job = self._jobs.popleft()
            try:
                clean = job()
            except BaseException:  # noqa: BLE001 - the job reports its own failures
                clean = False
            if not clean:
                return
