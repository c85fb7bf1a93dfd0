#!/usr/bin/env python3
"""Held requests vs everything else: decision latency with N actions waiting for a human.

Run it as `scripts/bench approvals [--held N] [--calls N]`.

One session; its program first measures K chmod() calls (each decided by the Python
supervisor: chmod is notified and not on the native fast path) and K write-opens (decided
and performed by the native fast path) with nothing held, then starts N threads that each
unlink a file a step_up rule holds, waits until the session's control socket reports N
pending, and measures both again. Then every request is denied over the control socket,
timed. Reported: p50/p99 of both calls in both phases, their ratios, and the answer
throughput. All figures come from one run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROFILE = """\
id: bench-approvals
extends: default
settings:
  approval_rate: 1000000
  max_pending: 100000
rules:
  - id: held
    actions: [file.delete]
    paths: ["{workspace}/keep/**"]
    decision: step_up
"""

PROGRAM = r"""
import os, sys, threading, time
ws, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
probe = os.path.join(ws, 'probe')
open(probe, 'w').close()
def pct(out):
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]
def lat():
    chmod, wopen = [], []
    for i in range(k):
        t = time.perf_counter_ns(); os.chmod(probe, 0o600 | (i & 1) << 2); chmod.append(time.perf_counter_ns() - t)
    for i in range(k):
        t = time.perf_counter_ns(); os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644)); wopen.append(time.perf_counter_ns() - t)
    return (*pct(chmod), *pct(wopen))
base = lat()
threading.stack_size(64 * 1024)
def rm(p):
    try:
        os.unlink(p)
    except OSError:
        pass
ts = [threading.Thread(target=rm, args=(os.path.join(ws, 'keep', f'f{i}'),)) for i in range(n)]
for t in ts: t.start()
while not os.path.exists(os.path.join(ws, 'go')):
    time.sleep(0.01)
held = lat()
print('LAT', *base, *held, flush=True)
open(os.path.join(ws, 'measured'), 'w').close()
for t in ts: t.join()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args()
    from aarm_sandbox.approvals.client import ControlClient
    root = Path(tempfile.mkdtemp(prefix="aarm-bench-approvals-"))
    try:
        ws = root / "ws"
        (ws / "keep").mkdir(parents=True)
        for i in range(args.held):
            (ws / "keep" / f"f{i}").write_text("x")
        (root / "p.yaml").write_text(PROFILE)
        sid = f"bench-{os.getpid()}"
        env = dict(os.environ, XDG_STATE_HOME=str(root / "state"))
        exe = os.environ.get("AARM_SANDBOX_BIN")
        cmd = ([exe] if exe else [sys.executable, "-m", "aarm_sandbox"]) + [
            "run", "--profile", str(root / "p.yaml"), "--workspace", str(ws), "--session-id", sid,
            "--journal", str(root / "j.jsonl"), "--approver", "socket", "--approval-timeout", "600",
            "--", sys.executable, "-c", PROGRAM, str(ws), str(args.held), str(args.calls)]
        proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, text=True)
        client = ControlClient(root / "state" / "aarm-sandbox" / "control" / f"{sid}.sock")
        t0 = time.monotonic()
        pending = 0
        while pending < args.held:
            if time.monotonic() - t0 > 300 or proc.poll() is not None:
                print(f"only {pending} requests became pending", file=sys.stderr)
                return 1
            try:
                pending = client.request("GET", "/v1/session")[1]["pending"]
            except Exception:  # noqa: BLE001 - the socket is not there yet
                pass
            time.sleep(0.1)
        held_after = time.monotonic() - t0
        (ws / "go").touch()
        while not (ws / "measured").exists():
            time.sleep(0.02)
        reqs = client.request("GET", "/v1/requests")[1]["requests"]
        t1 = time.perf_counter()
        for r in reqs:
            h = client.request("GET", f"/v1/requests/{r['request']}")[1]["action_hash"]
            client.request("POST", f"/v1/requests/{r['request']}/deny", {"action_hash": h})
        answer_s = time.perf_counter() - t1
        out, _ = proc.communicate(timeout=300)
        v = [int(x) / 1000 for x in out.split("LAT", 1)[1].split()[:8]]
        print(f"{args.held} requests held after {held_after:.1f} s (all pending at once)")
        for name, (b50, b99, h50, h99) in (("chmod (Python path)", (v[0], v[1], v[4], v[5])),
                                           ("write-open (native path)", (v[2], v[3], v[6], v[7]))):
            print(f"{name:25} nothing held: p50 {b50:7.1f} us  p99 {b99:7.1f} us | "
                  f"{args.held} held: p50 {h50:7.1f} us  p99 {h99:7.1f} us | "
                  f"ratio p50 {h50 / b50:4.2f}x  p99 {h99 / b99:4.2f}x")
        print(f"answering {len(reqs)} requests over the control socket (get + deny each): "
              f"{answer_s:.2f} s ({len(reqs) / answer_s:.0f}/s)")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
