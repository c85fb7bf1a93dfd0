"""Back-pressure when the journal's writer thread falls behind: the appending thread helps
with one batch per append, never by emptying the whole queue in one go (which held up
the decision path for ~200 ms at 20,000 queued records)."""
from __future__ import annotations

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
