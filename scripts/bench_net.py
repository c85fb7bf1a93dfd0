#!/usr/bin/env python3
"""Network benchmark: a brokered connection's throughput against native, in one run.

Run it as `scripts/bench net [--gib N] [--rounds R]`.

A sink server on the host's 127.0.0.1 reads and discards; a client sends N GiB (default 1)
in 1 MiB writes, natively and inside `aarm-sandbox run --allow-net 127.0.0.1:PORT`, where
the supervisor made the connection and handed the socket over (ADDFD|SETFD): after the
connect, data flows through the kernel with no supervisor on the path. Rounds alternate
the order; the figure is the median throughput per configuration and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.9

CLIENT = r"""
import socket, sys, time
port, total = int(sys.argv[1]), int(sys.argv[2])
buf = b"\0" * (1 << 20)
s = socket.create_connection(("127.0.0.1", port))
t0 = time.perf_counter()
sent = 0
while sent < total:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(f'{{"bytes": {sent}, "seconds": {time.perf_counter() - t0}}}')
"""


def sink_server() -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            buf = bytearray(1 << 20)
            while c.recv_into(buf):
                pass
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return srv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    total = int(args.gib * (1 << 30))
    srv = sink_server()
    port = srv.getsockname()[1]
    exe = os.environ.get("AARM_SANDBOX_BIN")
    head = [exe] if exe else [sys.executable, "-m", "aarm_sandbox"]
    env = dict(os.environ)
    if not exe:
        env["PYTHONPATH"] = str(REPO)
    client = [sys.executable, "-c", CLIENT, str(port), str(total)]
    cmds = {"native": client,
            "brokered": head + ["run", "--allow-net", f"127.0.0.1:{port}", "--"] + client}
    results: dict[str, list[float]] = {k: [] for k in cmds}
    for rnd in range(args.rounds):
        order = list(cmds) if rnd % 2 == 0 else list(cmds)[::-1]
        for name in order:
            p = subprocess.run(cmds[name], capture_output=True, text=True, env=env, timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"bench: {name} failed: {p.stderr[-2000:]}")
            out = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
            results[name].append(out["bytes"] / out["seconds"] / (1 << 30))
        print(f"bench: round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    srv.close()
    nat = statistics.median(results["native"])
    bro = statistics.median(results["brokered"])
    print(f"\n{args.gib:g} GiB over TCP to the host's 127.0.0.1 (median of {args.rounds} rounds)")
    print(f"native           {nat:6.2f} GiB/s")
    print(f"brokered         {bro:6.2f} GiB/s   ratio {bro / nat:.2f}x "
          f"(target >= {TARGET_RATIO}x): {'PASS' if bro / nat >= TARGET_RATIO else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
