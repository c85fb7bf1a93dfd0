"""Back-pressure when the journal's writer thread falls behind: the appending thread helps
with one batch per append, never by emptying the whole queue in one go (which held up
the decision path for ~200 ms at 20,000 queued records)."""
from __future__ import annotations

import threading

from aarm_sandbox.journal import writer


def test_an_append_over_high_water_encodes_one_batch_not_the_whole_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "HIGH_WATER", 5 * writer.BATCH)
    j = writer.Journal(str(tmp_path / "j.jsonl"), "s-1")      # writer thread not started
    for i in range(5 * writer.BATCH):
        j.append({"type": "note", "i": i})
    assert len(j.queue) == 5 * writer.BATCH                   # at the mark: nothing inline
    j.append({"type": "note", "i": -1})
    assert len(j.queue) == 4 * writer.BATCH + 1               # one batch went out
    lines = (tmp_path / "j.jsonl").read_bytes().splitlines()
    assert len(lines) == writer.BATCH
    assert [l.count(b'"seq":') for l in lines] == [1] * writer.BATCH
    j._drain()                                                # the writer's own drain: all
    assert not j.queue
    assert len((tmp_path / "j.jsonl").read_bytes().splitlines()) == 5 * writer.BATCH + 1


def test_a_batch_is_written_in_whole_line_chunks_of_at_most_write_chunk_bytes(tmp_path):
    """An intent line appended by the native fast path between two of the writer's write(2)
    calls must land between two records, never inside one; and no single write may hold
    the file for a whole 45 KB batch."""
    j = writer.Journal(str(tmp_path / "j.jsonl"), "s-1")
    calls: list[bytes] = []
    real = j._write_all
    j._write_all = lambda data: (calls.append(data), real(data))
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (650 + i)) for i in range(64)]
    lines.insert(10, b'{"big":"%s"}\n' % (b"y" * (3 * writer.WRITE_CHUNK)))
    j._write(lines, sync=False)
    assert b"".join(calls) == b"".join(lines) == (tmp_path / "j.jsonl").read_bytes()
    assert len(calls) > 10
    for data in calls:
        assert data.endswith(b"\n")
        assert len(data) <= writer.WRITE_CHUNK or data.count(b"\n") == 1
    assert any(len(d) > writer.WRITE_CHUNK for d in calls)          # the big line, alone


def test_the_writer_takes_orjson_once_a_session_has_written_a_few_hundred_records(tmp_path, monkeypatch):
    from aarm_sandbox.journal import canonical as canonical_mod
    monkeypatch.setattr(canonical_mod, "_orjson", None)
    j = writer.Journal(str(tmp_path / "j.jsonl"), "s-1")
    j._writer_tid = threading.get_native_id()                # draining as the writer thread
    for i in range(writer.ORJSON_AFTER):
        j.append({"type": "note", "i": i})
    j._drain()
    assert canonical_mod._orjson is None                     # a short session never pays it
    j.append({"type": "note", "i": -1})
    j._drain()
    assert canonical_mod._orjson is not None


def test_an_error_in_the_writer_fails_the_journal_closed(tmp_path, monkeypatch):
    """An exception while encoding (here: a record the encoder refuses) must not just end
    the writer thread: the journal is marked failed, so every further action is denied."""
    j = writer.Journal(str(tmp_path / "j.jsonl"), "s-1")
    failures = []
    j.on_failure = lambda: failures.append(j.failed)
    monkeypatch.setattr(j, "_chain", lambda rec: (_ for _ in ()).throw(RuntimeError("boom")))
    j.start(None)
    j.append({"type": "note"})
    j._wake.set()
    j._thread.join(5)
    assert j.failed and "boom" in j.failed and failures


class _Claim:
    """A decision thread that is in Python for the first `busy` checks."""

    def __init__(self, busy: int):
        self.busy = busy
        self.waits = 0

    def claimed(self) -> bool:
        if self.busy > 0:
            self.busy -= 1
            return True
        return False

    def wait(self) -> None:
        self.waits += 1


def test_the_writer_cuts_its_batch_short_and_waits_while_a_decision_holds_the_claim(tmp_path):
    """While the decision thread is in Python, the writer thread finishes the record in hand,
    writes what it has and waits (intercept.claim) before the next batch: nothing is lost
    or reordered. An inline drain by another thread never waits on the claim."""
    j = writer.Journal(str(tmp_path / "j.jsonl"), "s-1")
    j._writer_tid = threading.get_native_id()                # draining as the writer thread
    j.polite = claim = _Claim(busy=3)
    for i in range(100):
        j.append({"type": "note", "i": i})
    calls: list[int] = []
    real = j._write
    j._write = lambda lines, sync: (calls.append(len(lines)), real(lines, sync))
    j._drain()
    assert calls[:3] == [1, 1, 1] and sum(calls) == 100 and calls[3] == writer.BATCH
    assert claim.waits == len(calls) + 1                      # before every batch, and the last check
    lines = (tmp_path / "j.jsonl").read_bytes().splitlines()
    assert [int(l.split(b'"i":')[1].split(b",")[0]) for l in lines] == list(range(100))
    j2 = writer.Journal(str(tmp_path / "j2.jsonl"), "s-2")   # not the writer thread
    j2.polite = claim2 = _Claim(busy=10 ** 6)
    for i in range(10):
        j2.append({"type": "note", "i": i})
    j2._drain()
    assert claim2.waits == 0 and len((tmp_path / "j2.jsonl").read_bytes().splitlines()) == 10
