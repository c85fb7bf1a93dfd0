"""STEP_UP and DEFER end to end: real sandboxed programs blocked in real syscalls while the
test answers through the session's control socket, the CLI or a terminal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import RunResult, sandbox_cmd, wait_for

PY = sys.executable

PROFILE = """\
id: approvals-test
extends: default
settings:
  approval_rate: 100000
rules:
  - id: keep-needs-approval
    actions: [file.delete]
    paths: ["{workspace}/keep/**"]
    decision: step_up
    errno: EROFS
    reason: files under keep/ need a human
  - id: deploy-needs-ticket
    actions: [file.write, file.create]
    paths: ["{workspace}/deploy/**"]
    requires_context: [ticket]
    decision: allow
    reason: deploy manifests change production
  - id: soon-or-never
    actions: [file.create]
    paths: ["{workspace}/soon/**"]
    requires_context: [window]
    timeout: 1
    decision: allow
    reason: only inside a change window
  - id: escalate-later
    actions: [file.create]
    paths: ["{workspace}/esc/**"]
    requires_context: [window]
    timeout: 1
    on_deadline: step_up
    decision: allow
    reason: changes outside a window need a human
  - id: frozen-approval
    actions: [file.delete]
    paths: ["{workspace}/frozen/**"]
    decision: step_up
    freeze: true
    reason: the whole agent stops while a human looks
  - id: config-write
    actions: [file.write]
    paths: ["{workspace}/config.ini"]
    decision: step_up
    reason: the shared config
  - id: rm-needs-approval
    actions: [process.exec]
    paths: [/usr/bin/rm, /bin/rm]
    argv: "* -rf *"
    decision: step_up
    reason: recursive deletion
  - id: terminal-only
    actions: [file.delete]
    paths: ["{workspace}/tonly/**"]
    decision: step_up
    approvers: [terminal]
    reason: only the human at the terminal
"""


def write_profile(box, text: str = PROFILE, name: str = "approvals") -> str:
    p = box.root / f"{name}.yaml"
    p.write_text(text)
    os.chmod(p, 0o644)
    return str(p)


def new_sid() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def control_socket(box, sid: str) -> Path:
    return box.root / "state" / "aarm-sandbox" / "control" / f"{sid}.sock"


class HeldSession:
    """A session running in the background, answered through its control socket."""

    def __init__(self, box, argv: list[str], *, profile: str | None = None,
                 extra: list[str] | None = None, approver: str = "socket", env: dict | None = None,
                 sid: str | None = None):
        self.box = box
        self.sid = sid or new_sid()
        self.state = box.root / "state"
        self.state.mkdir(exist_ok=True)
        if box.uid is not None:
            os.chown(self.state, box.uid, box.uid)
        self.env = dict(os.environ, XDG_STATE_HOME=str(self.state))
        if box.uid is not None:
            self.env["HOME"] = str(box.root / "home")
        self.env.update(env or {})
        self.journal = box.root / "journal" / f"{self.sid}.jsonl"
        cmd = sandbox_cmd() + ["run", "--profile", profile or write_profile(box),
                               "--workspace", str(box.workspace), "--journal", str(self.journal),
                               "--session-id", self.sid, "--approver", approver,
                               *(extra or []), "--", *argv]
        if box.uid is not None:
            cmd = ["setpriv", f"--reuid={box.uid}", f"--regid={box.uid}", "--clear-groups"] + cmd
        # stderr to a file: a pipe nobody reads would fill and stall the supervisor's
        # messages (one line per held request)
        self.stderr_path = box.root / f"{self.sid}.stderr"
        self._stderr = open(self.stderr_path, "w+")
        self.proc = subprocess.Popen(cmd, cwd=box.workspace, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        self.socket = control_socket(box, self.sid)

    def call(self, method: str, route: str, body: dict | None = None) -> tuple[int, dict]:
        from aarm_sandbox.approvals.client import ControlClient
        return ControlClient(self.socket).request(method, route, body)

    def wait_requests(self, count: int = 1, timeout: float = 30, kind: str | None = None) -> list[dict]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"session ended early: {self.proc.returncode}\n"
                                     f"stdout: {self.proc.stdout.read()[-2000:]}\n"
                                     f"stderr: {self.stderr_path.read_text()[-3000:]}")
            if self.socket.exists():
                try:
                    status, body = self.call("GET", "/v1/requests")
                except Exception as e:  # noqa: BLE001 - socket still being set up
                    last = e
                else:
                    reqs = [r for r in body["requests"] if kind is None or r["kind"] == kind]
                    if len(reqs) >= count:
                        return reqs
            time.sleep(0.05)
        raise AssertionError(f"no {count} pending request(s) within {timeout} s ({last})")

    def get(self, rid: str) -> dict:
        status, body = self.call("GET", f"/v1/requests/{rid}")
        assert status == 200, body
        return body

    def answer(self, rid: str, approve: bool, **extra) -> tuple[int, dict]:
        h = extra.pop("action_hash", None) or self.get(rid)["action_hash"]
        return self.call("POST", f"/v1/requests/{rid}/{'approve' if approve else 'deny'}",
                         {"action_hash": h, **extra})

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(sandbox_cmd() + list(args), env=self.env, capture_output=True,
                              text=True, timeout=60)

    def finish(self, timeout: float = 60) -> RunResult:
        out, _ = self.proc.communicate(timeout=timeout)
        err = self.stderr_path.read_text()
        records, intents = [], []
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    (intents if rec.get("type") == "intent" else records).append(rec)
        return RunResult(self.proc.returncode, out, err, self.journal, records, intents)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def sessions():
    started: list[HeldSession] = []

    def start(*a, **kw) -> HeldSession:
        s = HeldSession(*a, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.kill()


def ws_file(box, rel: str, content: str = "canary\n") -> Path:
    """A file in the workspace whose directories, like the file, belong to the box's user
    (so an unprivileged run may delete it at all)."""
    f = box.canary(rel, content, where="workspace")
    if box.uid is not None:
        d = f.parent
        while d != box.workspace:
            os.chown(d, box.uid, box.uid)
            d = d.parent
    return f


def approval_of(res: RunResult, target: str) -> list[dict]:
    return [r for r in res.receipts() if r["action"]["target"] == target]


UNLINK = ("import os, sys\n"
          "try:\n    os.unlink(sys.argv[1]); print('UNLINK ok')\n"
          "except OSError as e:\n    print('UNLINK', e.errno)\n")


# ---------------------------------------------------------------------------- answers
def test_step_up_approved_over_the_control_socket_happens_exactly_once(any_user_box, sessions):
    box = any_user_box
    f = ws_file(box, "keep/a")
    s = sessions(box, [PY, "-c", UNLINK, str(f)])
    [req] = s.wait_requests()
    assert req["kind"] == "step_up" and req["type"] == "file.delete" and req["target"] == str(f)
    assert f.exists(), "held: nothing may happen before the answer"
    shown = s.get(req["request"])["view"]
    assert shown["action"]["object"]["ino"] == f.stat().st_ino
    assert shown["rule"]["id"] == "keep-needs-approval"
    status, body = s.answer(req["request"], True, reason="looked fine", approver="reviewer-1")
    assert status == 200, body
    res = s.finish()
    assert "UNLINK ok" in res.stdout, res.stderr
    assert not f.exists()
    [rec] = approval_of(res, str(f))
    a = rec["decision"]["approval"]
    assert rec["decision"]["result"] == "step_up" and rec["outcome"]["executed"] is True
    assert a["answer"] == "approve" and a["by"]["channel"] == "control" and a["reason"] == "looked fine"
    assert a["by"]["label"] == "reviewer-1"
    asked = [r for r in res.records if r["type"] == "approval.request"]
    assert len(asked) == 1 and asked[0]["action_hash"] == a["action_hash"]
    assert subprocess.run(sandbox_cmd() + ["journal", "verify", str(s.journal)],
                          capture_output=True, env=s.env).returncode == 0


def test_step_up_denied_fails_with_the_rules_errno_and_nothing_happens(any_user_box, sessions):
    box = any_user_box
    f = ws_file(box, "keep/b")
    # (asked twice: a retry right after a refusal is not put to the human again)
    s = sessions(box, [PY, "-c", UNLINK + UNLINK, str(f)])
    [req] = s.wait_requests()
    r = s.cli("approvals", "deny", req["request"], "--reason", "not today")
    assert r.returncode == 0, r.stderr
    res = s.finish()
    assert res.stdout.count("UNLINK 30") == 2, res.stdout + res.stderr   # EROFS, as the rule says
    assert f.exists()
    first, again = approval_of(res, str(f))
    assert first["decision"]["approval"]["answer"] == "deny"
    assert first["outcome"] == {"executed": False, "return": -30, "errno": "EROFS"}
    assert again["decision"]["approval"]["answer"] == "repeat"
    assert req["request"] in again["decision"]["approval"]["reason"]


def test_unanswered_step_up_is_denied_at_the_timeout(box, sessions):
    f = box.canary("keep/c", where="workspace")
    t0 = time.monotonic()
    s = sessions(box, [PY, "-c", UNLINK, str(f)], extra=["--approval-timeout", "1"])
    res = s.finish()
    assert time.monotonic() - t0 >= 1.0
    assert "UNLINK 30" in res.stdout and f.exists()
    [rec] = approval_of(res, str(f))
    assert rec["decision"]["approval"]["answer"] == "timeout"
    assert "approvals approve" in res.stderr          # the user was told how to answer


def test_the_cli_lists_shows_and_approves_with_the_hash_it_showed(box, sessions):
    f = box.canary("keep/d", where="workspace")
    s = sessions(box, [PY, "-c", UNLINK, str(f)])
    [req] = s.wait_requests()
    listed = s.cli("approvals", "list", "--json")
    assert listed.returncode == 0 and req["request"] in listed.stdout, listed.stderr
    shown = s.cli("approvals", "show", req["request"])
    assert shown.returncode == 0 and str(f) in shown.stdout and "keep-needs-approval" in shown.stdout
    stale = s.cli("approvals", "approve", req["request"], "--hash", "0" * 64)
    assert stale.returncode != 0 and f.exists()
    ok = s.cli("approvals", "approve", req["request"])
    assert ok.returncode == 0, ok.stderr
    res = s.finish()
    assert "UNLINK ok" in res.stdout and not f.exists()


# ---------------------------------------------------------------------------- binding
FLIP = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
held, other = sys.argv[1].encode(), sys.argv[2].encode()
assert len(held) == len(other)
buf = ctypes.create_string_buffer(held)
flipping = threading.Event()
def flip():
    time.sleep(float(sys.argv[3]))
    print('FLIPPING', flush=True)
    flipping.set()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        ctypes.memmove(buf, other, len(other))
        ctypes.memmove(buf, held, len(held))
        ctypes.memmove(buf, other, len(other))
        time.sleep(0.0005)
threading.Thread(target=flip, daemon=True).start()
if float(sys.argv[3]) == 0:
    flipping.wait(); time.sleep(0.05)
r = libc.unlink(buf)
print('UNLINK', r, ctypes.get_errno(), flush=True)
os._exit(0)
"""


def test_rewriting_the_path_while_the_request_waits_changes_nothing(box, sessions):
    held = box.canary("keep/aaaaaaa", "approved target\n", where="workspace")
    other = box.canary("precious/xxx", "must survive\n", where="workspace")   # allowed by policy
    assert len(str(held)) == len(str(other))
    # Natively the flipped buffer is what unlink(2) reads: the other file goes.
    native = box.native([PY, "-c", FLIP, str(held), str(other), "0"])
    assert "UNLINK 0" in native.stdout or not other.exists() or not held.exists()
    assert not held.exists() or not other.exists(), native.stdout + native.stderr
    held = box.canary("keep/aaaaaaa", "approved target\n", where="workspace")
    other = box.canary("precious/xxx", "must survive\n", where="workspace")

    s = sessions(box, [PY, "-c", FLIP, str(held), str(other), "0.3"])
    [req] = s.wait_requests()
    assert req["target"] == str(held)
    line = s.proc.stdout.readline()
    assert "FLIPPING" in line
    time.sleep(0.3)                               # the buffer changes all the while
    status, body = s.answer(req["request"], True)
    assert status == 200, body
    res = s.finish()
    assert "UNLINK 0 0" in res.stdout, res.stdout + res.stderr
    assert not held.exists(), "the approved file is what was deleted"
    assert other.read_text() == "must survive\n"
    assert [r["action"]["target"] for r in res.receipts("file.delete")] == [str(held)]


REWRITE_ARGV = r"""
import ctypes, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
delay = float(sys.argv[1])
target = ctypes.create_string_buffer(b"build")
argv = (ctypes.c_void_p * 4)(ctypes.cast(ctypes.c_char_p(b"/usr/bin/rm"), ctypes.c_void_p).value,
                             ctypes.cast(ctypes.c_char_p(b"-rf"), ctypes.c_void_p).value,
                             ctypes.addressof(target), None)
def rewrite():
    time.sleep(delay)
    ctypes.memmove(target, b"keep!", 5)
    print("REWRITTEN", flush=True)
t = threading.Thread(target=rewrite)
t.start()
if delay == 0:
    t.join()
libc.execv(b"/usr/bin/rm", argv)
print("EXEC FAILED", ctypes.get_errno())
"""


def test_rewriting_the_argv_of_a_held_exec_while_it_waits_kills_it_before_it_runs(box, sessions):
    """The human approves `rm -rf build` as shown; a second thread rewrites "build" into
    "keep!" while the request waits. The kernel copies the argv only when the exec goes
    on: the new program is checked in its exec stop and killed there, before rm runs."""
    for d in ("build", "keep!"):
        (box.workspace / d / "sub").mkdir(parents=True)
    native = box.native([PY, "-c", REWRITE_ARGV, "0"])
    assert not (box.workspace / "keep!").exists(), native.stdout + native.stderr
    (box.workspace / "keep!" / "sub").mkdir(parents=True)

    s = sessions(box, [PY, "-c", REWRITE_ARGV, "0.3"])
    [req] = s.wait_requests()
    assert req["kind"] == "step_up" and "build" in json.dumps(s.get(req["request"])), req
    assert "REWRITTEN" in s.proc.stdout.readline()
    status, body = s.answer(req["request"], True)
    assert status == 200, body
    res = s.finish()
    assert (box.workspace / "keep!" / "sub").is_dir(), res.stdout + res.stderr
    assert (box.workspace / "build" / "sub").is_dir(), res.stdout + res.stderr
    killed = [r for r in res.records if r.get("type") == "enforcement"]
    assert killed and "other arguments than the ones decided on" in killed[0]["reason"], killed


def test_an_answer_is_single_use_and_bound_to_the_view(box, sessions):
    a = box.canary("keep/one", where="workspace")
    b = box.canary("keep/two", where="workspace")
    code = ("import os, sys\nfor p in sys.argv[1:]:\n"
            "    try:\n        os.unlink(p); print('UNLINK ok', flush=True)\n"
            "    except OSError as e:\n        print('UNLINK', e.errno, flush=True)\n")
    s = sessions(box, [PY, "-c", code, str(a), str(b)])
    [first] = s.wait_requests()
    h1 = s.get(first["request"])["action_hash"]
    assert s.answer(first["request"], True, action_hash=h1)[0] == 200
    second = None
    deadline = time.monotonic() + 20
    while second is None and time.monotonic() < deadline:
        reqs = [r for r in s.call("GET", "/v1/requests")[1]["requests"] if r["request"] != first["request"]]
        second = reqs[0] if reqs else None
        time.sleep(0.05)
    assert second is not None and second["target"] == str(b)
    # the old approval, replayed: the request is gone (single use)
    status, body = s.call("POST", f"/v1/requests/{first['request']}/approve", {"action_hash": h1})
    assert status == 404, body
    # the old view's hash on the new request: refused (bound to what was shown)
    status, body = s.call("POST", f"/v1/requests/{second['request']}/approve", {"action_hash": h1})
    assert status == 409, body
    assert s.answer(second["request"], False)[0] == 200
    res = s.finish()
    assert res.stdout.split("\n")[:2] == ["UNLINK ok", "UNLINK 30"]
    assert not a.exists() and b.exists()


def test_signals_to_the_waiting_caller_do_not_drop_or_repeat_the_request(box, sessions):
    f = box.canary("keep/sig", where="workspace")
    code = ("import os, signal, sys, threading, time\n"
            "hits = []\nsignal.signal(signal.SIGUSR1, lambda *a: hits.append(1))\n"
            "me = os.getpid()\n"
            "def storm():\n    for _ in range(200):\n        os.kill(me, signal.SIGUSR1); time.sleep(0.005)\n"
            "threading.Thread(target=storm, daemon=True).start()\n"
            # (EINTR: a signal that lands before the supervisor has received the
            # notification interrupts it; Python installs handlers without SA_RESTART)
            "while True:\n"
            "    try:\n        os.unlink(sys.argv[1]); print('UNLINK ok', flush=True); break\n"
            "    except InterruptedError:\n        continue\n"
            "    except OSError as e:\n        print('UNLINK', e.errno, flush=True); break\n")
    s = sessions(box, [PY, "-c", code, str(f)])
    [req] = s.wait_requests()
    time.sleep(1.2)                                # the storm runs while it waits
    assert [r["request"] for r in s.wait_requests()] == [req["request"]]
    assert s.answer(req["request"], True)[0] == 200
    res = s.finish()
    assert "UNLINK ok" in res.stdout and not f.exists()
    assert len([r for r in res.records if r["type"] == "approval.request"]) == 1


# ---------------------------------------------------------------------------- reachability
REACH = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
         "try:\n    s.connect(sys.argv[1]); print('REACHED', flush=True)\n"
         "except OSError as e:\n    print('REFUSED', e.errno, flush=True)\n"
         "import os\ntry:\n    os.unlink(sys.argv[2]); print('UNLINK ok')\n"
         "except OSError as e:\n    print('UNLINK', e.errno)\n")


@pytest.mark.parametrize("namespaces", ["all", "no-mount-namespace"])
def test_the_sandbox_cannot_reach_the_control_socket_to_approve_itself(box, sessions, namespaces):
    f = box.canary("keep/self", where="workspace")
    env = {"AARM_DISABLE_NAMESPACES": "mount"} if namespaces != "all" else {}
    sid = new_sid()
    path = control_socket(box, sid)
    # (the socket exists before the command starts: it is made before the first decision)
    s = sessions(box, [PY, "-c", REACH, str(path), str(f)], env=env, sid=sid)
    [req] = s.wait_requests()
    # Outside the sandbox the same socket answers (the test itself is such a caller) ...
    assert s.call("GET", "/v1/session")[0] == 200
    assert s.answer(req["request"], False)[0] == 200
    res = s.finish()
    # ... inside, it cannot even be connected to, so the agent cannot approve itself.
    assert "REFUSED" in res.stdout and "REACHED" not in res.stdout, res.stdout + res.stderr
    assert "UNLINK 30" in res.stdout and f.exists()


def _sandbox_init(run_pid: int) -> int:
    with open(f"/proc/{run_pid}/task/{run_pid}/children") as fh:
        kids = [int(x) for x in fh.read().split()]
    assert kids, "the run process has no sandbox child"
    return kids[0]


def test_a_process_inside_the_sandbox_namespaces_is_refused_by_peer_check(box, sessions):
    """Defence in depth: even a caller that can see the socket file (nsenter into the
    sandbox's pid and network namespaces, host mount namespace) is refused."""
    f = box.canary("keep/peer", where="workspace")
    s = sessions(box, [PY, "-c", UNLINK, str(f)], extra=["--approval-timeout", "20"])
    [req] = s.wait_requests()
    h = s.get(req["request"])["action_hash"]
    init = _sandbox_init(s.proc.pid)
    client = ("import json, sys\n"
              "from aarm_sandbox.approvals.client import ControlClient\n"
              "print(json.dumps(ControlClient(sys.argv[1]).request('POST', sys.argv[2], "
              "{'action_hash': sys.argv[3]})))\n")
    route = f"/v1/requests/{req['request']}/approve"
    inside = subprocess.run(["nsenter", "-t", str(init), "--pid", "--net", "--", PY, "-c", client,
                             str(s.socket), route, h], capture_output=True, text=True, timeout=30)
    assert inside.returncode == 0, inside.stderr
    status, body = json.loads(inside.stdout)
    assert status == 403 and "inside the sandbox" in body["error"]
    assert f.exists() and [r["request"] for r in s.wait_requests()] == [req["request"]]
    # the same call from the host's namespaces works
    outside = subprocess.run([PY, "-c", client, str(s.socket), route, h], capture_output=True,
                             text=True, timeout=30)
    assert json.loads(outside.stdout)[0] == 200, outside.stdout + outside.stderr
    res = s.finish()
    assert "UNLINK ok" in res.stdout and not f.exists()


# ---------------------------------------------------------------------------- DEFER
WRITE = ("import sys\ntry:\n    open(sys.argv[1], 'w').write('v2\\n'); print('WRITE ok', flush=True)\n"
         "except OSError as e:\n    print('WRITE', e.errno, flush=True)\n")


def test_defer_waits_for_context_and_context_add_releases_it(box, sessions):
    (box.workspace / "deploy").mkdir()
    target = box.workspace / "deploy" / "app.yaml"
    s = sessions(box, [PY, "-c", WRITE, str(target)], approver="none")
    [req] = s.wait_requests(kind="defer")
    assert s.get(req["request"])["view"]["waiting_for"] == ["ticket"]
    assert not target.exists()
    bad = s.cli("context", "add", s.sid, "no-equals-sign")
    assert bad.returncode == 125
    r = s.cli("context", "add", s.sid, "ticket=OPS-12")
    assert r.returncode == 0, r.stderr
    res = s.finish()
    assert "WRITE ok" in res.stdout and target.read_text() == "v2\n"
    [rec] = approval_of(res, str(target))
    assert rec["decision"]["result"] == "defer"
    assert rec["decision"]["approval"]["answer"] == "context"
    assert rec["decision"]["approval"]["decision"]["result"] == "allow"
    [added] = [r for r in res.records if r["type"] == "context.add"]
    assert added["key"] == "ticket" and added["value"] == "OPS-12"


def test_defer_is_denied_at_its_deadline(box, sessions):
    (box.workspace / "soon").mkdir()
    target = box.workspace / "soon" / "x"
    t0 = time.monotonic()
    s = sessions(box, [PY, "-c", WRITE, str(target)], approver="none")
    res = s.finish()
    assert time.monotonic() - t0 >= 1.0
    assert "WRITE 13" in res.stdout and not target.exists()
    [rec] = approval_of(res, str(target))
    assert rec["decision"]["approval"]["answer"] == "timeout"


def test_defer_escalates_to_a_human_at_its_deadline_when_the_rule_says_so(box, sessions):
    (box.workspace / "esc").mkdir()
    target = box.workspace / "esc" / "x"
    s = sessions(box, [PY, "-c", WRITE, str(target)])
    [req] = s.wait_requests(kind="step_up", timeout=10)
    view = s.get(req["request"])["view"]
    assert "escalated" in view["rule"]["reason"] and view["previous_request"]
    assert s.answer(req["request"], True)[0] == 200
    res = s.finish()
    assert "WRITE ok" in res.stdout and target.exists()


CHAIN = """\
id: chain
extends: default
settings:
  max_deferrals: MAX
rules:
  - id: needs-a
    actions: [file.create]
    paths: ["{workspace}/chain/**"]
    requires_context: [a]
    decision: allow
  - id: needs-b
    actions: [file.create]
    paths: ["{workspace}/chain/**"]
    requires_context: [b]
    decision: allow
"""


@pytest.mark.parametrize("cap", [1, 3])
def test_chains_of_deferrals_are_capped(box, sessions, cap):
    (box.workspace / "chain").mkdir()
    target = box.workspace / "chain" / "x"
    profile = write_profile(box, CHAIN.replace("MAX", str(cap)), f"chain{cap}")
    s = sessions(box, [PY, "-c", WRITE, str(target)], profile=profile, approver="none")
    [first] = s.wait_requests(kind="defer")
    key = s.get(first["request"])["view"]["waiting_for"][0]
    other = "b" if key == "a" else "a"
    r = s.cli("context", "add", s.sid, f"{key}=1")
    assert r.returncode == 0, r.stderr
    if cap == 1:
        res = s.finish()
        assert "WRITE 13" in res.stdout and not target.exists()
        [rec] = approval_of(res, str(target))
        assert rec["decision"]["approval"]["answer"] == "deferrals"
        return
    [again] = s.wait_requests(kind="defer")
    assert again["request"] != first["request"] and again["waiting_for"] == [other]
    assert s.cli("context", "add", s.sid, f"{other}=2").returncode == 0
    res = s.finish()
    assert "WRITE ok" in res.stdout and target.exists()


def test_a_rule_can_restrict_who_may_answer(box, sessions):
    f = box.canary("tonly/x", where="workspace")
    s = sessions(box, [PY, "-c", UNLINK, str(f)], extra=["--approval-timeout", "3"])
    [req] = s.wait_requests()
    status, body = s.answer(req["request"], True)
    assert status == 403 and "terminal" in body["error"]
    res = s.finish()
    assert "UNLINK 13" in res.stdout and f.exists()
    [rec] = approval_of(res, str(f))
    assert rec["decision"]["approval"]["answer"] == "timeout"


# ---------------------------------------------------------------------------- fatigue
def test_approving_for_the_session_answers_identical_requests_without_asking_again(box, sessions):
    cfg = box.canary("config.ini", "a=1\n", where="workspace")
    code = ("import sys\nfor i in range(5):\n"
            "    try:\n        open(sys.argv[1], 'a').write(f'x={i}\\n'); print('W ok', flush=True)\n"
            "    except OSError as e:\n        print('W', e.errno, flush=True)\n")
    s = sessions(box, [PY, "-c", code, str(cfg)])
    [req] = s.wait_requests()
    r = s.cli("approvals", "approve", req["request"], "--session-scope")
    assert r.returncode == 0, r.stderr
    res = s.finish()
    assert res.stdout.count("W ok") == 5, res.stdout + res.stderr
    answers = [r["decision"]["approval"]["answer"] for r in approval_of(res, str(cfg))]
    # In journal order, except that the approved write's receipt (appended by the thread
    # that answered, after the answer) may land after the next write's, which the
    # decision thread granted meanwhile.
    assert sorted(answers) == ["approve", "grant", "grant", "grant", "grant"], answers


def test_requests_beyond_the_rate_limit_are_denied_without_asking(box, sessions):
    profile = write_profile(box, PROFILE.replace("approval_rate: 100000", "approval_rate: 3"), "rate")
    files = [box.canary(f"keep/r{i}", where="workspace") for i in range(6)]
    code = ("import os, sys, threading\nout = []\n"
            "def rm(p):\n    try:\n        os.unlink(p); out.append('ok')\n"
            "    except OSError as e:\n        out.append(e.errno)\n"
            "ts = [threading.Thread(target=rm, args=(p,)) for p in sys.argv[1:]]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\nprint('RESULTS', sorted(map(str, out)))\n")
    s = sessions(box, [PY, "-c", code, *map(str, files)], profile=profile)
    reqs = s.wait_requests(3)
    time.sleep(0.5)
    assert len(s.call("GET", "/v1/requests")[1]["requests"]) == 3
    for r in reqs:
        assert s.answer(r["request"], False)[0] == 200
    res = s.finish()
    assert all(f.exists() for f in files)
    answers = sorted(r["decision"]["approval"]["answer"] for r in res.receipts("file.delete"))
    assert answers == ["deny"] * 3 + ["rate-limit"] * 3


# ---------------------------------------------------------------------------- scale
MANY = r"""
import os, sys, threading, time
ws, n = sys.argv[1], int(sys.argv[2])
probe = os.path.join(ws, 'probe')
open(probe, 'w').close()
def lat(k):
    out = []
    for i in range(k):
        t = time.perf_counter_ns(); os.chmod(probe, 0o600 | (i & 1) << 2); out.append(time.perf_counter_ns() - t)
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]
base = lat(3000)
results = []
def rm(p):
    try:
        os.unlink(p); results.append(0)
    except OSError as e:
        results.append(e.errno)
threading.stack_size(64 * 1024)
ts = [threading.Thread(target=rm, args=(os.path.join(ws, 'keep', f'f{i}'),)) for i in range(n)]
for t in ts: t.start()
print('STARTED', flush=True)
while not os.path.exists(os.path.join(ws, 'go')):
    time.sleep(0.01)
held = lat(3000)
print('LAT', base[0], base[1], held[0], held[1], flush=True)
open(os.path.join(ws, 'measured'), 'w').close()
for t in ts: t.join()
print('DONE', sorted(set(results)), len(results), flush=True)
"""


def test_a_thousand_held_requests_do_not_slow_other_decisions(box, sessions):
    n = 1000
    for i in range(n):
        box.canary(f"keep/f{i}", where="workspace")
    s = sessions(box, [PY, "-c", MANY, str(box.workspace), str(n)],
                 extra=["--approval-timeout", "120"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = s.call("GET", "/v1/session") if s.socket.exists() else (0, {})
        if status == 200 and body["pending"] >= n:
            break
        time.sleep(0.1)
    assert body["pending"] == n, body
    (box.workspace / "go").touch()
    while not (box.workspace / "measured").exists():
        assert s.proc.poll() is None
        time.sleep(0.05)
    for r in s.call("GET", "/v1/requests")[1]["requests"]:
        assert s.answer(r["request"], False)[0] == 200
    res = s.finish(timeout=120)
    lat = [int(x) for x in res.stdout.split("LAT", 1)[1].split()[:4]]
    print(f"\nchmod p50/p99 with 0 held: {lat[0] / 1e3:.1f}/{lat[1] / 1e3:.1f} us; "
          f"with {n} held: {lat[2] / 1e3:.1f}/{lat[3] / 1e3:.1f} us")
    assert "DONE [30] 1000" in res.stdout, res.stdout[-2000:]
    # Held requests cost no worker: other decisions go on (not a benchmark; see scripts/bench).
    assert lat[3] < 20_000_000, lat
    assert len(list((box.workspace / "keep").iterdir())) == n


# ---------------------------------------------------------------------------- freeze
def test_a_freeze_rule_stops_the_whole_tree_until_the_answer(any_user_box, sessions):
    """As root through the cgroup v1 freezer; unprivileged through SIGSTOP/SIGCONT."""
    box = any_user_box
    f = ws_file(box, "frozen/a")
    counter = box.workspace / "counter"
    code = ("import os, subprocess, sys, time\n"
            "subprocess.Popen(['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > %s.tmp; "
            "mv -f %s.tmp %s; sleep 0.02; done'])\n" % (counter, counter, counter) +
            "time.sleep(0.5)\n"
            "os.unlink(sys.argv[1]); print('UNLINK ok', flush=True)\ntime.sleep(5)\n")
    s = sessions(box, [PY, "-c", code, str(f)])
    [req] = s.wait_requests()
    assert s.get(req["request"])["view"]["freeze"] is True
    time.sleep(0.3)
    first = counter.read_text()
    time.sleep(0.5)
    assert counter.read_text() == first, "the tree kept running while frozen"
    assert s.answer(req["request"], True)[0] == 200
    deadline = time.monotonic() + 5
    while counter.read_text() == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counter.read_text() != first, "the tree was not thawed"
    s.kill()


# ---------------------------------------------------------------------------- terminal
TTY_AGENT = r"""
import fcntl, os, subprocess, sys, termios
try:
    for ch in b"y\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([ch]))
    print("INJECTED", flush=True)
except OSError as e:
    print("INJECT-FAILED", e.errno, flush=True)
if sys.argv[1] == "native":
    print("GOT", repr(sys.stdin.readline()), flush=True)
    sys.exit(0)
# What a naive display shows: "rm -rf junk" (the real target is wiped from the line).
argv = ["/usr/bin/rm", "-rf", sys.argv[1], "\r\x1b[2K\x1b[8mrm -rf junk"]
try:
    print("RM", subprocess.run(argv).returncode, flush=True)
except PermissionError as e:
    print("RM-DENIED", e.errno, flush=True)
"""


def _on_pty(cmd: list[str], env: dict, cwd) -> tuple[int, int]:
    import pty
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(cwd)
            os.execvpe(cmd[0], cmd, env)
        finally:
            os._exit(127)
    return pid, fd


def _reap(pid: int, fd: int) -> None:
    """Wait up to 30 s for the session on the pty to end (then kill it), close the pty."""
    for _ in range(300):
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    os.close(fd)


def _read_until(fd: int, needle: bytes | None, timeout: float = 30) -> bytes:
    import select
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return out
            if not chunk:
                return out
            out += chunk
            if needle is not None and needle in out:
                return out
    if needle is None:
        return out
    raise AssertionError(f"{needle!r} not seen on the terminal within {timeout} s:\n{out[-3000:]!r}")


def test_keystrokes_can_be_injected_into_a_terminal_natively(box):
    pid, fd = _on_pty([PY, "-c", TTY_AGENT, "native"], dict(os.environ), box.workspace)
    out = _read_until(fd, b"GOT")
    out += _read_until(fd, None, timeout=2)
    os.waitpid(pid, 0)
    assert b"INJECTED" in out and b"GOT 'y\\n'" in out, out


@pytest.mark.parametrize("answer", ["y", "n"])
def test_terminal_prompt_shows_the_true_argv_and_cannot_be_typed_into(box, answer):
    important = box.workspace / "important"
    important.mkdir()
    (important / "data").write_text("keep me\n")
    sid = new_sid()
    state = box.root / "state"
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    cmd = sandbox_cmd() + ["run", "--profile", write_profile(box), "--workspace", str(box.workspace),
                           "--journal", str(box.root / "journal" / f"{sid}.jsonl"),
                           "--session-id", sid, "--approver", "terminal", "--",
                           PY, "-c", TTY_AGENT, str(important)]
    pid, fd = _on_pty(cmd, env, box.workspace)
    try:
        screen = _read_until(fd, b"> ")
        assert b"INJECT-FAILED 1" in screen, screen       # TIOCSTI: EPERM inside
        prompt = screen[screen.index(b"rm -rf"):]
        # the true argv, escaped: the hidden target and the line-wiping escapes are visible
        assert str(important).encode() in prompt
        assert b"\\x0d\\x1b[2K\\x1b[8mrm -rf junk" in prompt
        assert b"\x1b" not in prompt, "raw escapes reached the approver's terminal"
        # nothing injected was taken as an answer: still pending after a while
        time.sleep(0.5)
        from aarm_sandbox.approvals.client import ControlClient
        client = ControlClient(control_socket(box, sid))
        assert len(client.request("GET", "/v1/requests")[1]["requests"]) == 1
        os.write(fd, f"{answer}\n".encode())
        rest = _read_until(fd, None, timeout=20)
    finally:
        _reap(pid, fd)
    if answer == "y":
        assert b"RM 0" in rest, rest
        assert not important.exists()
    else:
        assert b"RM-DENIED" in rest, rest
        assert (important / "data").read_text() == "keep me\n"
    journal = [json.loads(x) for x in (box.root / "journal" / f"{sid}.jsonl").read_text().splitlines()]
    [rec] = [r for r in journal if r.get("type") == "receipt" and r["action"]["type"] == "process.exec"
             and r["action"].get("argv", [""])[0] == "/usr/bin/rm"]
    a = rec["decision"]["approval"]
    assert a["by"]["channel"] == "terminal" and a["answer"] == ("approve" if answer == "y" else "deny")


HELD_THEN_BUSY = """
import os, sys, threading, time
def later():
    time.sleep(1.5)
    for i in range(200):
        try:
            open(f"busy-{i}", "w").close()      # receipts the full journal cannot take
        except OSError:
            pass
        time.sleep(0.01)
threading.Thread(target=later, daemon=True).start()
try:
    with open(sys.argv[1], "a") as f:           # held: git-hook (an append: no intent line)
        f.write("evil")
    print("APPEND ok")
except OSError as e:
    print("APPEND", e.errno)
"""


def test_a_held_action_approved_after_the_journal_failed_is_denied(box, sessions):
    """Nothing may happen unrecorded: once a journal write failed, an answer that arrives
    later cannot carry out what was held (it used to: the hook was written, no receipt)."""
    import errno
    small = box.root / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        f = ws_file(box, ".git/hooks/pre-commit", "#!/bin/sh\n")
        journal = small / "held.jsonl"
        s = sessions(box, [PY, "-c", HELD_THEN_BUSY, str(f)], extra=["--journal", str(journal)],
                     env={"AARM_JOURNAL_CHECKPOINT_MS": "600000"})
        s.journal = journal
        [req] = s.wait_requests()
        fill = os.open(small / "fill", os.O_WRONLY | os.O_CREAT)   # the disk fills up meanwhile
        try:
            while os.write(fill, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass
        finally:
            os.close(fill)
        assert wait_for(lambda: "failed" in s.stderr_path.read_text(), timeout=20), \
            s.stderr_path.read_text()
        status, body = s.answer(req["request"], True)
        out, _ = s.proc.communicate(timeout=60)     # (the journal ends in a torn line)
        assert f"APPEND {errno.EIO}" in out, out + s.stderr_path.read_text()[-2000:]
        assert f.read_text() == "#!/bin/sh\n"
    finally:
        subprocess.run(["umount", "-l", str(small)])


SETSID_FAKE = ("(setsid sh -c 'sleep 1.5; printf FAKE-REQUEST-DRAWN') & "
               "echo evil >> .git/hooks/pre-commit; echo write-rc=$?; wait")


def test_a_process_out_of_the_terminals_session_cannot_draw_over_the_prompt(box):
    """setsid() takes a process out of the terminal's job control (TOSTOP, SIGTTIN) but
    leaves it the fds to the terminal: it could draw a harmless-looking request over the
    real one and read the keys typed for it. The whole tree pauses while the human is
    asked. (Natively the setsid'd child writes to the terminal whenever it likes.)"""
    hooks = box.workspace / ".git" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\n")
    pid, fd = _on_pty(["sh", "-c", SETSID_FAKE.replace(".git/hooks/pre-commit", "/dev/null")],
                      dict(os.environ), box.workspace)
    native = _read_until(fd, b"FAKE-REQUEST-DRAWN", timeout=10)
    os.waitpid(pid, 0)
    os.close(fd)
    assert b"FAKE-REQUEST-DRAWN" in native
    sid = new_sid()
    env = dict(os.environ, XDG_STATE_HOME=str(box.root / "state"))
    cmd = sandbox_cmd() + ["run", "--workspace", str(box.workspace),
                           "--journal", str(box.root / "journal" / f"{sid}.jsonl"),
                           "--session-id", sid, "--approver", "terminal", "--", "sh", "-c", SETSID_FAKE]
    pid, fd = _on_pty(cmd, env, box.workspace)
    try:
        screen = _read_until(fd, b"> ")
        assert b".git/hooks/pre-commit" in screen, screen
        during = _read_until(fd, None, timeout=3)           # the fake would appear at 1.5 s
        os.write(fd, b"n\n")
        after = _read_until(fd, None, timeout=10)
    finally:
        _reap(pid, fd)
    assert b"FAKE-REQUEST-DRAWN" not in during, during
    assert b"write-rc=" in after and b"write-rc=0" not in after, after
    assert (hooks / "pre-commit").read_text() == "#!/bin/sh\n"
