"""The mapped intents file (native/aarm_intentlog.c, journal/intent_log.py) on real files:
lines land whole and in order in the file's page cache, the file grows by fallocate'd
chunks, a full disk fails the append (never a SIGBUS), and a session that did not end
leaves zero bytes its readers stop at."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aarm_sandbox.journal.chain import intent_bytes
from aarm_sandbox.journal.intent_log import IntentLog
from aarm_sandbox.journal.reader import parse_lines, sidecar_intents
from conftest import sandbox_cmd

CHUNK = 1 << 20


def _line(k: int) -> bytes:
    return (b'{"type":"intent","session_id":"S","notif":%d,"action":"file.delete",'
            b'"syscall":"unlink","tid":7,"target":{"b64":"%s"}}\n' % (k, b"QUJD" * 20))


def _new(path: Path) -> tuple[int, IntentLog | None]:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    return fd, IntentLog.open(fd)


@pytest.mark.parametrize("where", ["tmp_path", "/dev/shm"])
def test_lines_are_appended_whole_and_in_order_across_chunks_then_trimmed(tmp_path, where):
    base = tmp_path if where == "tmp_path" else Path("/dev/shm")
    path = base / f"intents-{os.getpid()}-{time.monotonic_ns()}"
    fd, log = _new(path)
    try:
        assert log is not None
        lines = [_line(k) for k in range(8000)]            # ~1.5 MiB: a second chunk
        want = b"".join(lines)
        for ln in lines:
            log.append(ln)
        assert log.used == len(want)
        # in the file already (page cache), before any close or sync; then zeros
        data = path.read_bytes()
        assert data[:len(want)] == want and len(data) == 2 * CHUNK
        assert data[len(want):] == bytes(len(data) - len(want))
        assert intent_bytes(data) == want
        log.close()
        assert path.read_bytes() == want                   # trimmed to its lines
        with pytest.raises(OSError) as e:
            log.append(_line(0))
        assert e.value.errno == 9                          # EBADF once closed
        assert path.read_bytes() == want
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def test_files_that_cannot_be_mapped_are_left_to_write(tmp_path):
    """Write-only, not empty, not a regular file: no log (the journal write(2)s them)."""
    wo = tmp_path / "wo"
    fd = os.open(wo, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    assert IntentLog.open(fd) is None
    os.close(fd)
    full = tmp_path / "full"
    full.write_bytes(b"x\n")
    fd = os.open(full, os.O_RDWR | os.O_APPEND)
    assert IntentLog.open(fd) is None
    os.close(fd)
    assert full.read_bytes() == b"x\n"
    r, w = os.pipe()
    assert IntentLog.open(w) is None
    os.close(r)
    os.close(w)


def test_a_full_disk_fails_the_append_and_every_later_one(tmp_path):
    """A growth that fails (here RLIMIT_FSIZE: EFBIG) fails that append and every later one,
    with nothing of the line written: the caller then performs nothing."""
    path = tmp_path / "intents"
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        sys.path[:0] = {sys.path!r}
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({CHUNK} + {CHUNK} // 2,) * 2)
        from aarm_sandbox.journal.intent_log import IntentLog
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        log = IntentLog.open(fd)
        line = b"x" * 99 + b"\\n"
        n = 0
        try:
            while True:
                log.append(line)
                n += 1
        except OSError as e:
            first = e.errno
        try:
            log.append(b"y\\n")
            later = 0
        except OSError as e:
            later = e.errno
        print(n, first, later, log.used)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    n, first, later, used = map(int, p.stdout.split())
    assert first == later == 27                            # EFBIG, and stays so
    assert used == n * 100 and n == CHUNK // 100
    assert intent_bytes(path.read_bytes()) == (b"x" * 99 + b"\n") * n


def test_a_killed_supervisor_leaves_zeros_after_its_intents_which_readers_skip(tmp_path):
    """The supervisor SIGKILLed mid-session: its intents file keeps the rest of its chunk as
    zeros (nobody trimmed it); verify, show and the sidecar reader list every intent line and
    stop at the zeros (no unreadable line)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for k in range(20):
        (ws / f"f{k}").write_text("x")
    journal = tmp_path / "j.jsonl"
    done = ws / "deleted"
    proc = subprocess.Popen(sandbox_cmd() + [
        "run", "--workspace", str(ws), "--journal", str(journal), "--", "sh", "-c",
        f"rm {ws}/f*; touch {done}; sleep 60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists()
        proc.send_signal(signal.SIGKILL)                   # the supervisor itself
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ipath = Path(str(journal) + ".intents")
    data = ipath.read_bytes()
    lines = intent_bytes(data)
    assert len(data) == CHUNK and data[len(lines):] == bytes(len(data) - len(lines))
    parsed = list(parse_lines(lines))
    assert len(parsed) == 20 and all(ln.record and ln.record["type"] == "intent" for ln in parsed)
    assert {json.loads(ln.raw)["action"] for ln in parsed} == {"file.delete"}
    assert len(sidecar_intents(str(journal))) == 20
    show = subprocess.run(sandbox_cmd() + ["journal", "show", str(journal)],
                          capture_output=True, text=True, timeout=60)
    assert "unreadable" not in show.stdout.lower() + show.stderr.lower()
    verify = subprocess.run(sandbox_cmd() + ["journal", "verify", str(journal)],
                            capture_output=True, text=True, timeout=60)
    assert "malformed" not in (verify.stdout + verify.stderr).lower()


def test_a_file_shortened_under_the_mapping_fails_the_append_and_the_process_lives(tmp_path):
    """Someone outside the sandbox truncates the intents file (logrotate's copytruncate):
    a store past the new end raises SIGBUS, which killed the supervisor; the store is
    guarded, the append fails with EIO and so does every later one (fail closed)."""
    path = tmp_path / "intents"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = {sys.path!r}
        from aarm_sandbox.journal.intent_log import IntentLog
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        log = IntentLog.open(fd)
        log.append(b"a\\n")
        os.truncate({str(path)!r}, 0)
        errs = []
        for line in (b"b\\n", b"c\\n"):
            try:
                log.append(line)
                errs.append(0)
            except OSError as e:
                errs.append(e.errno)
        print(*errs)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr)       # (-7: killed by SIGBUS)
    assert p.stdout.split() == ["5", "5"]                     # EIO, and stays so


def test_a_forked_child_holds_no_mapping_of_the_intents_file(tmp_path):
    """The sandbox's init is forked from the supervisor after the journal is made: it must
    not carry a writable mapping of the intents file through the session."""
    path = tmp_path / "intents"
    fd, log = _new(path)
    try:
        assert log is not None
        mine = Path("/proc/self/maps").read_text()
        assert str(path) in mine
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.write(w, str(path).encode() in Path("/proc/self/maps").read_bytes() and b"1" or b"0")
            finally:
                os._exit(0)
        os.close(w)
        seen = os.read(r, 1)
        os.close(r)
        os.waitpid(pid, 0)
        assert seen == b"0"
        log.close()
    finally:
        os.close(fd)


def test_zero_bytes_end_no_intent_line_after_them():
    """The zero tail of a killed session is dropped; zeros between lines (a page that never
    reached the disk) hide nothing after them; a line they cut is dropped as torn, the
    lines after it stay."""
    a, b, c = _line(1), _line(2), _line(3)
    assert intent_bytes(a + b + bytes(4000)) == a + b
    notifs = lambda data: [ln.record["notif"] for ln in parse_lines(intent_bytes(data))]  # noqa: E731
    assert notifs(a + bytes(4096) + b) == [1, 2]
    assert notifs(a + b[:40] + bytes(3) + b[40:] + c) == [1, 3]
    assert notifs(a + b[:40] + bytes(4096) + b"tail of another line\n" + c + bytes(9)) == [1, 3]
    big = a + bytes(64 << 20)                              # a 64 MiB zero tail: quick
    t0 = time.monotonic()
    assert intent_bytes(big) == a and time.monotonic() - t0 < 1


def test_a_zero_page_ending_inside_a_line_drops_that_lines_tail():
    """A page of zeros (power loss) may end inside a line although the text before it
    ended one: the rest after the zeros is the tail of a line, dropped as torn."""
    a, b, c = _line(1), _line(2), _line(3)
    assert [ln.record["notif"] for ln in parse_lines(intent_bytes(a + bytes(8) + b[12:] + c))] == [1, 3]
