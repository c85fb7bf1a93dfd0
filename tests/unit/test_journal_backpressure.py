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
