"""The signed, hash-chained journal: real sessions, then every tamper an auditor must catch.

Each tamper test starts from a journal a real sandboxed session wrote and verified, changes
it the way an attacker with write access to the file would, and checks that `journal verify`
fails and names the record.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import signal
import subprocess
import sys
import time
from hashlib import sha256
from pathlib import Path

import pytest
from conftest import sandbox_cmd

from aarm_sandbox.journal import chain
from aarm_sandbox.journal.keys import key_id, raw_public
from aarm_sandbox.journal.reader import as_bytes, sidecar_intents
from aarm_sandbox.journal.verify import EXIT_BAD, EXIT_OK, EXIT_UNSEALED, verify_bytes

WORK = """
set -e
echo one > a.txt
echo two > b.txt
mv a.txt c.txt
rm b.txt
mkdir d
echo three >> c.txt
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(sandbox_cmd() + list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _trusted() -> dict:
    from aarm_sandbox.journal.keys import trusted_keys
    return trusted_keys([])


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _chained(lines: list[bytes]) -> list[int]:
    """Indexes of the chained records (not intent lines)."""
    return [i for i, l in enumerate(lines) if json.loads(l).get("type") != "intent"]


def _verify(data: bytes, witness: str | None = None):
    return verify_bytes(data, _trusted(), witness)


@pytest.fixture
def session(box):
    r = box.run(["sh", "-c", WORK], extra=["--agent-id", "test-agent"])
    assert r.returncode == 0, r.stderr
    return r


def test_a_real_sessions_journal_verifies_sealed_with_identity_and_policy(session):
    p = _cli("journal", "verify", str(session.journal_path))
    assert p.returncode == EXIT_OK, p.stdout + p.stderr
    assert "intact and sealed" in p.stdout
    recs = [r for r in session.records if r["type"] != "intent"]
    assert recs[0]["type"] == "session.start" and recs[-1]["type"] == "session.end"
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    start = recs[0]
    assert start["identity"]["agent"] == "test-agent"
    assert start["key"]["id"].startswith("ed25519:")
    assert "mount" in start["isolation"]["namespaces"]
    for r in session.receipts():
        assert r["identity"]["agent"] == "test-agent"
        assert r["decision"]["policy"]["id"] == "default"
        assert r["decision"]["policy"]["sha256"] == start["profile"]["sha256"]
        assert r["receipt_id"] == f"{r['session_id']}:{r['seq']}"
        assert len(r["context_hash"]) == 64
        assert r["action"]["notif"].isdigit()
    rm = [r for r in session.receipts("file.delete")]
    assert rm and rm[0]["action"]["exe"].endswith("/rm")
    assert recs[-1]["sig"] and recs[-1]["to_seq"] == recs[-1]["seq"] - 1


def test_destructive_actions_leave_an_intent_line_in_the_intents_file(session):
    """Every delete and rename has its intent line, written before the action, in the
    file beside the journal (PATH.intents: not the journal itself, whose writer it held
    up); `session.start` names it. (Written before: test_fastpath_native and the kill
    test below.)"""
    lines = [json.loads(l) for l in _lines(session.journal_path)]
    assert not [l for l in lines if l["type"] == "intent"]
    sidecar = Path(str(session.journal_path) + ".intents")
    assert lines[0]["intents"] == sidecar.name
    intents = {json.loads(l)["notif"] for l in sidecar.read_bytes().splitlines()}
    for kind in ("file.delete", "file.rename"):
        rs = [l for l in lines if l["type"] == "receipt" and l["action"]["type"] == kind]
        assert rs, kind
        for r in rs:
            assert int(r["action"]["notif"]) in intents, f"{kind} receipt without an intent"


@pytest.mark.parametrize("tamper", ["edit", "delete_first", "delete_middle", "delete_last",
                                    "delete_last_3", "swap", "insert_forged", "replay_other_session",
                                    "replace_key", "append_after_seal", "append_intent_after_seal",
                                    "append_junk_after_seal", "malformed_record"])
def test_every_tamper_fails_verification_and_names_the_record(box, session, tamper):
    data = session.journal_path.read_bytes()
    assert _verify(data).exit_code == EXIT_OK
    lines = _lines(session.journal_path)
    idx = _chained(lines)
    mid = idx[len(idx) // 2]
    expect_seq = None
    if tamper == "edit":
        rec = json.loads(lines[mid])
        rec["action"]["target"] = "/somewhere/else"
        lines[mid] = json.dumps(rec).encode() + b"\n"
        expect_seq = rec["seq"]
    elif tamper == "delete_first":
        del lines[idx[0]]
    elif tamper == "delete_middle":
        expect_seq = json.loads(lines[mid])["seq"]
        del lines[mid]
    elif tamper == "delete_last":
        del lines[idx[-1]]
    elif tamper == "delete_last_3":
        for i in reversed(idx[-3:]):
            del lines[i]
    elif tamper == "swap":
        a, b = idx[2], idx[3]
        lines[a], lines[b] = lines[b], lines[a]
    elif tamper == "insert_forged":
        lines = _forge_insert(lines, idx[3])
    elif tamper == "replay_other_session":
        other = box.run(["sh", "-c", WORK])
        olines = _lines(other.journal_path)
        lines[mid] = olines[_chained(olines)[_chained(lines).index(mid)]]
    elif tamper == "replace_key":
        lines = _resign(lines)
    elif tamper == "append_after_seal":
        forged = json.loads(lines[idx[2]])
        forged["seq"] = json.loads(lines[idx[-1]])["seq"] + 1
        lines.append(json.dumps(forged).encode() + b"\n")
    elif tamper == "append_intent_after_seal":
        # a forged "may have happened unrecorded" line must not ride on a valid seal
        sidecar = Path(str(session.journal_path) + ".intents").read_bytes()
        lines.append(sidecar.splitlines(keepends=True)[0])
    elif tamper == "append_junk_after_seal":
        lines.append(b"ANYTHING APPENDED AFTER THE SEAL")           # (no newline: a "torn" tail)
    elif tamper == "malformed_record":
        # the right hash over the wrong shape: reported as tampering, not a verifier crash
        at = next(i for i in idx if json.loads(lines[i])["type"] == "receipt")
        rec = json.loads(lines[at])
        rec["outcome"] = "x"
        lines[at] = json.dumps(_rehash(rec, rec["prev_hash"])).encode() + b"\n"
        expect_seq = rec["seq"]
    bad = b"".join(lines)
    rep = _verify(bad)
    if tamper in ("delete_last", "delete_last_3"):
        assert rep.exit_code == EXIT_UNSEALED and not rep.sealed, rep.summary()
        assert "NOT SEALED" in rep.summary()
    else:
        assert rep.exit_code == EXIT_BAD, f"{tamper} went unnoticed: {rep.summary()}"
        assert rep.bad_seq is not None or rep.bad_line is not None
        if expect_seq is not None:
            assert rep.bad_seq == expect_seq, rep.summary()
    # the CLI says the same
    tampered = box.root / "tampered.jsonl"
    tampered.write_bytes(bad)
    p = _cli("journal", "verify", str(tampered))
    assert p.returncode == rep.exit_code
    assert ("FAILED at " in p.stderr) or ("NOT SEALED" in p.stderr), p.stderr


def _rehash(rec: dict, prev: str) -> dict:
    rec = {k: v for k, v in rec.items() if k not in ("hash", "sig")}
    rec["prev_hash"] = prev
    rec["hash"] = sha256(chain.body_of(rec)).hexdigest()
    return rec


def _forge_insert(lines: list[bytes], at: int) -> list[bytes]:
    """A forger without the key: inserts a plausible receipt and re-chains everything
    after it (hashes, seqs, receipt ids, context hashes are all recomputed)."""
    recs = [json.loads(l) for l in lines]
    forged = dict(recs[at])
    forged["action"] = {**forged["action"], "target": "/forged"}
    recs.insert(at, forged)
    out, prev, seq = [], None, 0
    for r in recs:
        if r["type"] == "intent":
            out.append(r)
            continue
        seq += 1
        r["seq"] = seq
        if r["type"] == "receipt":
            r["receipt_id"] = f"{r['session_id']}:{seq}"
        prev = prev or r["prev_hash"]
        r = _rehash(r, prev)
        prev = r["hash"]
        out.append(r)
    return [json.dumps(r).encode() + b"\n" for r in out]


def _resign(lines: list[bytes]) -> list[bytes]:
    """A forger with their own key: a fully valid journal under a key nobody trusts."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    k = Ed25519PrivateKey.generate()
    kid = key_id(k.public_key())
    out, prev = [], None
    for l in lines:
        r = json.loads(l)
        if r["type"] == "intent":
            out.append(l)
            continue
        if r["type"] == "session.start":
            r["key"] = {"id": kid, "public": base64.b64encode(raw_public(k.public_key())).decode()}
        prev = prev or r["prev_hash"]
        r = _rehash(r, prev)
        if r["type"] in ("checkpoint", "session.end"):
            r["key_id"] = kid
            r = _rehash(r, prev)
            r["sig"] = base64.b64encode(k.sign(chain.body_of(r))).decode()
        prev = r["hash"]
        out.append(json.dumps(r).encode() + b"\n")
    return out


def test_editing_any_field_of_any_record_is_detected(session):
    data = session.journal_path.read_bytes()
    lines = _lines(session.journal_path)
    checked = 0
    for i in _chained(lines):
        rec = json.loads(lines[i])
        for path in _leaf_paths(rec):
            if path[0] == "hash":
                continue
            edited = json.loads(lines[i])
            _set(edited, path, _other(_get(edited, path)))
            bad = b"".join(lines[:i] + [json.dumps(edited).encode() + b"\n"] + lines[i + 1:])
            rep = _verify(bad)
            assert rep.exit_code == EXIT_BAD, f"edit of {path} in seq {rec['seq']} went unnoticed"
            assert rep.bad_seq in (rec["seq"], 1, None) or path == ("seq",), (path, rep.summary())
            checked += 1
    assert checked > 100
    assert _verify(data).exit_code == EXIT_OK


def _leaf_paths(obj, prefix=()):
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaf_paths(v, prefix + (i,))
    else:
        yield prefix


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _other(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        return v + "x" if v else "x"
    if v is None:
        return "x"
    return None


def test_supervisor_killed_leaves_an_unsealed_journal_with_every_deletion_recorded(box):
    n = 4000
    for i in range(n):
        (box.workspace / f"f{i:05d}").write_text("x")
    prog = "import os\nfor i in range(%d):\n    os.unlink('f%%05d' %% i)\n" % n
    for fast in ("1", "0"):
        journal = box.root / f"killed-{fast}.jsonl"
        # (profile observe: the default profile stops mass deletion after 100 files)
        p = subprocess.Popen(sandbox_cmd() + ["run", "--profile", "observe",
                                              "--workspace", str(box.workspace), "--journal",
                                              str(journal), "--", sys.executable, "-c", prog],
                             cwd=box.workspace, env={**os.environ, "AARM_FAST_PATH": fast},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(1 for _ in box.workspace.iterdir()) > n * 3 // 4:
            time.sleep(0.002)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        gone = {str(box.workspace / f"f{i:05d}") for i in range(n)
                if not (box.workspace / f"f{i:05d}").exists()}
        assert 0 < len(gone) < n, "the kill should land mid-run"
        rep = _verify(journal.read_bytes())
        assert rep.exit_code == EXIT_UNSEALED, rep.summary()
        recorded = set()
        sidecar = Path(str(journal) + ".intents")
        for line in journal.read_bytes().splitlines() + sidecar.read_bytes().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue                       # the torn last line
            if r["type"] == "intent" and r["action"] == "file.delete":
                recorded.add(os.fsdecode(as_bytes(r["target"])))
            elif r["type"] == "receipt" and r["action"]["type"] == "file.delete":
                recorded.add(r["action"]["target"])
        assert gone <= recorded, f"fast={fast}: {len(gone - recorded)} deletions left no record"
        for i in range(n):
            (box.workspace / f"f{i:05d}").write_text("x")


def test_the_sandbox_cannot_read_or_change_its_journal_or_the_signing_key(box):
    from aarm_sandbox.journal.keys import key_dir
    key = key_dir() / "journal-ed25519.pem"
    journal = box.root / "journal" / "inside.jsonl"
    script = f"""
cat {key} 2>&1 | head -c 200; echo "key-read-rc=$?"
echo "listed=$(ls -A {key_dir()} 2>/dev/null | grep -c pem)"
echo forged >> {journal} 2>&1; echo "append-rc=$?"
cat {journal} | head -c 300; echo "journal-read-done"
: > {key} 2>&1; echo "truncate-key-rc=$?"
echo '{{"type":"intent","forged":1}}' >> {journal}.intents 2>&1; cat {journal}.intents | head -c 300
"""
    assert key.exists() or box.run(["true"]).returncode == 0
    # (observe: a profile without credential masks of its own still hides these)
    for masked_by, profile in (("mount namespace", "default"), ("supervisor", "default"),
                               ("supervisor", "observe")):
        env = {} if masked_by == "mount namespace" else {"AARM_DISABLE_NAMESPACES": "mount"}
        before = key.read_bytes()
        cmd = sandbox_cmd() + ["run", "--profile", profile, "--workspace", str(box.workspace),
                               "--journal", str(journal), "--", "sh", "-c", script]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=box.workspace,
                           env={**os.environ, **env})
        assert "PRIVATE KEY" not in p.stdout, masked_by
        assert "listed=0" in p.stdout, masked_by
        assert '"session.start"' not in p.stdout, masked_by
        assert key.read_bytes() == before, masked_by
        assert b"forged" not in journal.read_bytes().splitlines(), masked_by
        intents = Path(str(journal) + ".intents")
        assert b"forged" not in intents.read_bytes() and '"type":"intent"' not in p.stdout, masked_by
        assert _verify(journal.read_bytes()).exit_code == EXIT_OK, masked_by
        journal.unlink()
        Path(str(journal) + ".intents").unlink()
    # Natively, the same script reads the key: the test would notice a sandbox that leaks it.
    native = subprocess.run(["sh", "-c", f"head -c 40 {key}"], capture_output=True, text=True)
    assert "PRIVATE KEY" in native.stdout


def test_odd_path_bytes_are_journaled_faithfully_and_shown_escaped(box):
    names = [b"new\nline", b"esc\x1b[31mred", b"bad\xff\xfeutf8", b"bidi\xe2\x80\xaeevil"]
    script = "import os\nfor n in %r:\n    open(n, 'wb').close()\n    os.unlink(n)\n" % names
    r = box.run([sys.executable, "-c", script])
    assert r.returncode == 0, r.stderr
    targets = {as_bytes(x["action"]["target"]) for x in r.receipts("file.delete")}
    for n in names:
        assert os.fsencode(str(box.workspace)) + b"/" + n in targets
    assert _verify(r.journal_path.read_bytes()).exit_code == EXIT_OK
    shown = _cli("journal", "show", str(r.journal_path))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    assert "new\\nline" in shown.stdout


def test_witness_detects_a_journal_rolled_back_to_an_earlier_point(box):
    witness = box.root / "witness"
    witness.mkdir()
    script = "import os, time\nfor i in range(30):\n    open('w%d' % i, 'w').close()\n    time.sleep(0.01)\n"
    r = box.run([sys.executable, "-c", script], extra=["--witness", str(witness)],
                env={"AARM_JOURNAL_CHECKPOINT_EVERY": "5"})
    assert r.returncode == 0, r.stderr
    wfile = witness / f"{r.records[0]['session_id']}.jsonl"
    assert len(wfile.read_text().splitlines()) >= 3
    p = _cli("journal", "verify", str(r.journal_path), "--witness", str(witness))
    assert p.returncode == EXIT_OK, p.stderr
    # roll back: keep the journal up to its second checkpoint (a valid, older copy)
    lines = _lines(r.journal_path)
    cps = [i for i, l in enumerate(lines) if json.loads(l)["type"] == "checkpoint"]
    older = b"".join(lines[:cps[1] + 1])
    assert _verify(older).exit_code == EXIT_UNSEALED       # alone: looks like a crash
    rep = _verify(older, str(witness))
    assert rep.exit_code == EXIT_BAD and "rolled back" in rep.problem, rep.summary()


def test_witness_inside_the_workspace_is_refused(box):
    r = box.run(["true"], extra=["--witness", str(box.workspace / "w.jsonl")])
    assert r.returncode == 125 and "inside the workspace" in r.stderr


def test_keygen_creates_an_owner_only_key_and_export_prints_the_public_key(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    p = _cli("keygen", env=env)
    assert p.returncode == 0, p.stderr
    priv = tmp_path / "aarm-sandbox/keys/journal-ed25519.pem"
    assert priv.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "aarm-sandbox/keys").stat().st_mode & 0o777 == 0o700
    again = _cli("keygen", env=env)
    assert again.returncode == 125 and "already exists" in again.stderr
    exp = _cli("keys", "export", env=env)
    assert exp.returncode == 0 and "BEGIN PUBLIC KEY" in exp.stdout and "PRIVATE" not in exp.stdout
    assert p.stdout.split("key id ")[1].strip() in exp.stdout


def test_verify_on_another_machine_needs_the_exported_key(box, session, tmp_path):
    exported = tmp_path / "pub.pem"
    exported.write_text(_cli("keys", "export").stdout)
    elsewhere = {"XDG_CONFIG_HOME": str(tmp_path / "empty-config")}
    p = _cli("journal", "verify", str(session.journal_path), env=elsewhere)
    assert p.returncode == EXIT_BAD and "not trusted" in p.stderr
    p = _cli("journal", "verify", str(session.journal_path), "--key", str(exported), env=elsewhere)
    assert p.returncode == EXIT_OK, p.stderr


def test_a_journal_inside_the_workspace_cannot_be_deleted_or_renamed(box):
    """Masked from the sandbox, but a delete or rename the supervisor performs in its own
    mount namespace would reach the real file: `rm` removed the journal."""
    journal = box.workspace / "session.jsonl"
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal", str(journal),
                           "--", "sh", "-c", "rm -f session.jsonl; mv session.jsonl moved 2>/dev/null; true"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=box.workspace)
    assert p.returncode == 0, p.stderr
    assert journal.exists() and not (box.workspace / "moved").exists(), p.stderr
    assert _verify(journal.read_bytes()).exit_code == EXIT_OK
    assert "denied file.delete" in p.stderr and "denied file.rename" in p.stderr


# ---- the intents file (review of fddc0bf)

def test_the_journal_cannot_be_removed_through_a_symlinked_directory(box):
    """Protected paths were the journal path as given: through a symlinked directory
    `rm logs/j.jsonl logs/j.jsonl.intents` removed both (the sandbox's action resolves)."""
    logs = box.workspace / "logs"
    logs.mkdir()
    link = box.root / "lnk"
    link.symlink_to(logs)
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace), "--journal", str(link / "j.jsonl"),
                           "--", "sh", "-c", "rm -f logs/j.jsonl logs/j.jsonl.intents; echo rm=$?"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=box.workspace)
    assert "rm=1" in p.stdout, p.stdout + p.stderr
    assert (logs / "j.jsonl").exists() and (logs / "j.jsonl.intents").exists()
    assert _verify((logs / "j.jsonl").read_bytes()).exit_code == EXIT_OK


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_something_planted_at_the_intents_path_is_refused_by_name(box, planted):
    """A symlink to /dev/null there swallowed every intent (verify: intact); a FIFO hung
    the start for good."""
    journal = box.root / "p.jsonl"
    where = Path(str(journal) + ".intents")
    if planted == "symlink":
        where.symlink_to("/dev/null")
    else:
        os.mkfifo(where)
    p = _cli("run", "--workspace", str(box.workspace), "--journal", str(journal), "--", "true")
    assert p.returncode == 125 and str(where) in p.stderr, p.stderr
    assert not journal.exists()


def test_a_delete_handed_over_after_its_intent_is_settled_by_the_answer(box):
    """The fast path writes a delete's intent line, then meets a symlink on the way (ELOOP
    from the no-symlink tree) and hands the call over; Python answers it - here ENOENT
    through a dangling link, nothing deleted - with an error record naming the notif, so
    verify and show list no action that may have happened unrecorded."""
    ws = box.workspace
    r = box.run(["sh", "-c", f"ln -s /nonexistent {ws}/dang; "
                             f"for i in 1 2 3; do rm -f {ws}/dang/x$i; done"])
    assert r.returncode == 0, r.stderr
    handed = [i for i in r.intents if base64.b64decode(i["target"]["b64"]).startswith(
        os.fsencode(ws / "dang"))]
    assert len(handed) == 3
    answered = {rec["notif"] for rec in r.records
                if rec["type"] == "error" and "notif" in rec and rec["performed"] is False}
    assert {str(i["notif"]) for i in handed} <= answered
    p = _cli("journal", "verify", str(r.journal_path))
    assert p.returncode == EXIT_OK and "unrecorded" not in p.stdout + p.stderr, p.stdout + p.stderr
    show = _cli("journal", "show", str(r.journal_path)).stdout
    assert "NO RECEIPT" not in show and "intent without receipt" not in show, show


def test_a_zero_byte_planted_in_the_intents_file_hides_no_later_line(box, session):
    """Readers skip zero bytes (the unused tail of a mapped intents file) and the line they
    cut: one planted in a line must not hide every line after it."""
    copy = box.root / "nul.jsonl"
    copy.write_bytes(session.journal_path.read_bytes())
    src = Path(str(session.journal_path) + ".intents")   # (found by the name session.start gives)
    data = src.read_bytes()
    cut = data.index(b"\n") + 20                      # inside the second line
    (box.root / src.name).write_bytes(data[:cut] + b"\0" + data[cut:])
    lines = data.splitlines()
    assert len(lines) >= 3
    kept = sidecar_intents(str(copy), copy.read_bytes().split(b"\n", 1)[0])
    assert [ln.raw for ln in kept] == [lines[0]] + lines[2:]
    p = _cli("journal", "verify", str(copy))
    assert p.returncode == EXIT_OK, p.stdout + p.stderr


def test_verify_lists_the_intents_of_a_supervisor_killed_before_its_first_write(box, session):
    """An empty journal (killed within its first flush) with intents beside it: the
    actions that may have happened are listed with the verdict."""
    journal = box.root / "early.jsonl"
    journal.write_bytes(b"")
    Path(str(journal) + ".intents").write_bytes(
        Path(str(session.journal_path) + ".intents").read_bytes())
    p = _cli("journal", "verify", str(journal))
    assert p.returncode == EXIT_BAD and "empty journal" in p.stderr
    assert "may have happened unrecorded" in p.stderr and "file.delete" in p.stderr, p.stderr


def test_verify_and_tail_find_the_intents_file_session_start_names(box, session):
    """A journal copied under another name keeps finding its intents file (by the name its
    session.start records), and `journal tail` lists intents without a receipt as `show`
    does."""
    copy = box.root / "copy.jsonl"
    copy.write_bytes(session.journal_path.read_bytes())
    src = Path(str(session.journal_path) + ".intents")
    forged = json.loads(src.read_bytes().splitlines()[0])
    forged["notif"] = 1
    (box.root / src.name).write_bytes(src.read_bytes() + json.dumps(forged).encode() + b"\n")
    p = _cli("journal", "verify", str(copy))
    assert p.returncode == EXIT_OK and "missing" not in p.stdout, p.stdout + p.stderr
    assert "may have happened unrecorded" in p.stdout, p.stdout
    for cmd in ("show", "tail"):
        out = _cli("journal", cmd, str(copy)).stdout
        assert "intent without receipt" in out or "NO RECEIPT" in out, (cmd, out)


def test_a_setup_error_leaves_a_given_fifo_journal_alone_and_ends_at_once(box):
    """The files of a run that fails during setup are removed only if the run made them:
    a FIFO given as --journal was read to see whether it was empty (a hang, all signals
    blocked), and before that, unlinked."""
    fifo = box.root / "collector-setup"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.DEVNULL)
    blocker = box.root / "a-file"
    blocker.write_text("x")
    try:
        p = _cli("run", "--workspace", str(box.workspace), "--journal", str(fifo), "--", "true",
                 env={"XDG_CACHE_HOME": str(blocker / "cache")})
    finally:
        reader.kill()
        reader.wait()
    assert p.returncode == 125, p.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_journal_survives_its_checkpoints(box):
    """fsync on a pipe is EINVAL: the first checkpoint failed the journal, and every action
    after it was denied."""
    fifo = box.root / "collector"
    os.mkfifo(fifo)
    out = box.root / "collected.jsonl"
    reader = subprocess.Popen(["sh", "-c", f"cat {fifo} > {out}"])
    try:
        p = _cli("run", "--workspace", str(box.workspace), "--journal", str(fifo), "--",
                 "sh", "-c", f"touch {box.workspace}/a1; sleep 0.6; touch {box.workspace}/a2",
                 env={"AARM_JOURNAL_CHECKPOINT_MS": "100"})
    finally:
        reader.wait(30)
    assert p.returncode == 0, p.stderr
    assert (box.workspace / "a2").exists() and "failed" not in p.stderr
    assert _verify(out.read_bytes()).exit_code == EXIT_OK


def test_a_setup_error_leaves_no_journal_files_that_block_the_next_run(box):
    journal = box.root / "u.jsonl"
    bad = _cli("run", "--workspace", str(box.workspace), "--allow-net", "not a dest!!",
               "--journal", str(journal), "--", "true")
    assert bad.returncode == 125 and "Traceback" not in bad.stderr
    assert not journal.exists() and not Path(str(journal) + ".intents").exists()
    again = _cli("run", "--workspace", str(box.workspace), "--journal", str(journal), "--", "true")
    assert again.returncode == 0, again.stderr
