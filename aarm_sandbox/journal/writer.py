"""Journal: one JSON object per line, written by a background thread.

The decision path only appends a dict to a deque (no I/O, no serialisation); the writer
thread numbers, stamps and encodes records and writes them in groups. Records pass through
a chain of `RecordSink`s so the signed hash chain (journal issue) can be added as one more
sink without touching the supervisor. If a write fails, `failed` is set and the supervisor
denies every new action from then on (fail closed), saying why on stderr.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from typing import Protocol


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def _background_priority() -> None:
    """Journal encoding must never compete with the sandbox and the decision loop for a
    CPU (2-core hosts): run this thread at the lowest priority. Records wait in memory;
    nothing on the decision path waits for them."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass


class RecordSink(Protocol):
    def write(self, records: list[dict]) -> None: ...
    def close(self) -> None: ...


class JsonlFileSink:
    """Appends canonical-ish JSON lines to a file opened O_APPEND|O_CLOEXEC, mode 0600."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, records: list[dict]) -> None:
        data = "".join(_dumps(r) + "\n" for r in records)
        raw = data.encode("utf-8", "surrogateescape")
        view = memoryview(raw)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def close(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass
        os.close(self.fd)


class Journal:
    def __init__(self, path: str, session_id: str, sinks: list[RecordSink] | None = None,
                 flush_interval: float = 0.02):
        self.path = path
        self.session_id = session_id
        self.sinks: list[RecordSink] = sinks if sinks is not None else [JsonlFileSink(path)]
        self.queue: deque[dict] = deque()
        self.seq = 0
        self.failed: str | None = None
        self.on_failure = None      # callback (e.g. switch the native fast path off)
        self._wake = threading.Event()
        self._stop = False
        self._interval = flush_interval
        self._thread = threading.Thread(target=self._run, name="aarm-journal", daemon=True)

    def start(self) -> "Journal":
        """Start the writer thread (separate from __init__ so the supervisor can finish
        single-threaded setup, such as dropping capabilities, first)."""
        self._thread.start()
        return self

    # --- hot path --------------------------------------------------------------------
    def append(self, record: dict) -> None:
        record["ts"] = time.time()
        self.queue.append(record)
        if len(self.queue) > 256:
            self._wake.set()

    def append_stamped(self, record: dict) -> None:
        """A record that already carries the time the decision was made (`ts`)."""
        self.queue.append(record)
        if len(self.queue) > 256:
            self._wake.set()

    # --- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        _background_priority()
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._drain()
            if self._stop:
                self._drain()
                return

    def _drain(self) -> None:
        # Small batches: encoding holds the GIL, and the decision thread must get it back
        # quickly (group commit without a long pause on the hot path).
        q = self.queue
        while q and not self.failed:
            batch: list[dict] = []
            while q and len(batch) < 64:
                rec = q.popleft()
                self.seq += 1
                rec["seq"] = self.seq
                rec["session_id"] = self.session_id
                batch.append(rec)
            try:
                for s in self.sinks:
                    s.write(batch)
            except Exception as e:  # noqa: BLE001 - any failure means fail closed
                self.failed = f"journal write to {self.path} failed: {e}"
                if self.on_failure is not None:
                    self.on_failure()
                print(f"aarm-sandbox: {self.failed}; denying all further actions", file=sys.stderr)
            time.sleep(0)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        else:
            self._drain()
        for s in self.sinks:
            try:
                s.close()
            except OSError:
                pass
