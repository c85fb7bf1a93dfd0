#!/usr/bin/env python3
"""Journal benchmark: what the signed hash-chained journal costs, measured in one run.

Run it as `scripts/bench journal [--quick] [--json FILE]`.

  1. Decisions at a fixed rate (default 20,000 decisions/s, the journal issue's figure):
     the target (scripts/bench_src/benchloop.c, BENCH_RATE) starts one operation per
     period and sleeps in between; for each configuration we record the mean time the
     target spends per decision (clock_gettime inside the target) and the CPU time of the
     whole run (supervisor + sandbox, getrusage of the children) per decision.
     Configurations, interleaved round by round: journal on (default) and off
     (AARM_JOURNAL=off: the supervisor does no journal work at all).
     Workloads: write-open in the workspace (the native fast path) and create+unlink on
     tmpfs (the unlink is destructive: an intent line is written before it).
  2. Flat out (no pacing): the same, to show the cost when the CPU is saturated.
  3. `journal verify` throughput on the journals the runs wrote, and on a 100,000-record
     journal written by the writer itself.

The figures are medians over rounds; the ratio on/off comes from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = Path(__file__).resolve().parent / "bench_src" / "benchloop.c"
sys.path.insert(0, str(REPO))

TARGET_EXTRA_US = 2.0
TARGET_VERIFY_PER_S = 50_000


def sandbox_cmd() -> list[str]:
    exe = os.environ.get("AARM_SANDBOX_BIN")
    return [exe] if exe else [sys.executable, "-m", "aarm_sandbox"]


def run_once(cmd: list[str], env: dict, cwd: Path) -> tuple[dict, float]:
    """(the target's JSON line, CPU seconds of the run's process tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0 or "denied" in p.stderr:
        raise SystemExit(f"bench: run failed (rc {p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    line = [l for l in p.stdout.splitlines() if l.startswith("{")][-1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(line), cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    ap.add_argument("--rate", type=int, default=20000, help="decisions per second (default 20000)")
    ap.add_argument("--rounds", type=int, help="rounds (default 5, quick 2)")
    ap.add_argument("--json", metavar="FILE", help="also write the samples and summary as JSON")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = 1 if args.quick else 3
    n_paced = args.rate * seconds

    base = Path(tempfile.mkdtemp(prefix="aarm-bench-journal-"))
    shm = f"/dev/shm/aarm-bench-journal-{os.getpid()}.dat"
    samples: dict[str, dict[str, list]] = {}
    verify_runs: list[tuple[int, float]] = []
    try:
        binary = base / "benchloop"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(SRC)], check=True)
        ws = base / "ws"
        ws.mkdir()
        B = str(binary)
        # (name, argv, decisions per iteration, rate in iterations/s or 0 = flat out)
        workloads = [
            ("paced write-open", [B, "lat", "open-write", str(ws / "w.dat"), str(n_paced), "1", "200"], 1, args.rate),
            ("paced create+unlink", [B, "lat", "create-unlink", shm, str(n_paced // 2), "1", "200"], 2, args.rate // 2),
            ("flat-out write-open", [B, "lat", "open-write", str(ws / "w.dat"), str(n_paced), "1", "200"], 1, 0),
            ("flat-out create+unlink", [B, "lat", "create-unlink", shm, str(n_paced // 2), "1", "200"], 2, 0),
        ]
        configs = ("on", "off")
        for name, *_ in workloads:
            samples[name] = {c: [] for c in configs}
        env0 = dict(os.environ)
        if not os.environ.get("AARM_SANDBOX_BIN"):
            # the source tree, with its in-place build (python3 native/build_native.py)
            env0["PYTHONPATH"] = str(REPO) + (os.pathsep + env0["PYTHONPATH"] if env0.get("PYTHONPATH") else "")
        else:
            env0.pop("PYTHONPATH", None)     # the installed package, as users run it
        print(f"bench: {rounds} rounds at {args.rate} decisions/s, {seconds} s per run", file=sys.stderr)
        k = 0
        for rnd in range(rounds):
            order = configs if rnd % 2 == 0 else configs[::-1]
            for name, argv, per_iter, rate in workloads:
                for cfg in order:
                    k += 1
                    journal = base / f"j{k}.jsonl"
                    env = dict(env0)
                    env.pop("AARM_JOURNAL", None)
                    if cfg == "off":
                        env["AARM_JOURNAL"] = "off"
                    if rate:
                        env["BENCH_RATE"] = str(rate)
                    cmd = sandbox_cmd() + ["run", "--workspace", str(ws), "--journal", str(journal), "--"] + argv
                    out, cpu = run_once(cmd, env, ws)
                    decisions = out["n"] * per_iter
                    samples[name][cfg].append({"busy_ns_per_decision": out["avg_busy_ns"] / per_iter,
                                               "p50_ns": out["p50_ns"] / per_iter,
                                               "cpu_ns_per_decision": cpu * 1e9 / decisions})
                    if cfg == "on" and journal.exists():
                        verify_runs.append(_time_verify(journal))
                    if journal.exists():
                        journal.unlink()
            print(f"bench: round {rnd + 1}/{rounds} done", file=sys.stderr)
        synthetic = _time_verify(_synthetic_journal(base / "synthetic.jsonl", 100_000 if not args.quick else 20_000))
    finally:
        shutil.rmtree(base, ignore_errors=True)
        try:
            os.unlink(shm)
        except OSError:
            pass

    def med(name, cfg, key):
        return statistics.median(s[key] for s in samples[name][cfg])

    print()
    print(f"Journal cost per decision (median of {rounds} rounds; on = signed hash-chained journal, "
          f"off = AARM_JOURNAL=off)")
    print(f"{'workload':26} {'target busy/decision on':>24} {'off':>9} {'extra':>9} {'ratio':>7}"
          f" {'CPU/decision on':>16} {'off':>9} {'extra':>9}")
    summary = {}
    for name, *_ in workloads:
        on_b, off_b = med(name, "on", "busy_ns_per_decision"), med(name, "off", "busy_ns_per_decision")
        on_c, off_c = med(name, "on", "cpu_ns_per_decision"), med(name, "off", "cpu_ns_per_decision")
        summary[name] = {"busy_on_us": on_b / 1e3, "busy_off_us": off_b / 1e3,
                         "busy_extra_us": (on_b - off_b) / 1e3, "busy_ratio": on_b / off_b,
                         "cpu_on_us": on_c / 1e3, "cpu_off_us": off_c / 1e3,
                         "cpu_extra_us": (on_c - off_c) / 1e3}
        s = summary[name]
        print(f"{name:26} {s['busy_on_us']:21.2f} us {s['busy_off_us']:6.2f} us {s['busy_extra_us']:+6.2f} us "
              f"{s['busy_ratio']:6.2f}x {s['cpu_on_us']:13.2f} us {s['cpu_off_us']:6.2f} us "
              f"{s['cpu_extra_us']:+6.2f} us")
    paced = [summary[n] for n in summary if n.startswith("paced")]
    worst = max(s["busy_extra_us"] for s in paced)
    print(f"\njournaling adds at most {worst:+.2f} us per decision to the target at {args.rate} decisions/s "
          f"(target <= {TARGET_EXTRA_US} us): {'PASS' if worst <= TARGET_EXTRA_US else 'MISS'}")
    vr = statistics.median(n / t for n, t in verify_runs) if verify_runs else 0
    sr = synthetic[0] / synthetic[1]
    print(f"journal verify: {sr:,.0f} records/s on a {synthetic[0]:,}-record journal, "
          f"{vr:,.0f} records/s on the runs' journals (target >= {TARGET_VERIFY_PER_S:,}): "
          f"{'PASS' if min(sr, vr or sr) >= TARGET_VERIFY_PER_S else 'MISS'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": samples, "summary": summary,
                                               "verify_records_per_s": {"synthetic": sr, "runs": vr}},
                                              indent=1))
    return 0


def _time_verify(path: Path) -> tuple[int, float]:
    from aarm_sandbox.journal.keys import trusted_keys
    from aarm_sandbox.journal.verify import verify_file
    trusted = trusted_keys([])
    t0 = time.perf_counter()
    rep = verify_file(str(path), trusted)
    dt = time.perf_counter() - t0
    if rep.exit_code != 0:
        raise SystemExit(f"bench: the journal {path} does not verify: {rep.summary()}")
    return rep.records, dt


def _synthetic_journal(path: Path, n: int) -> Path:
    """A journal written by the real writer (receipts shaped like the supervisor's)."""
    from aarm_sandbox.journal import keys
    from aarm_sandbox.journal.writer import Journal, Signer
    pair, _ = keys.ensure()
    j = Journal(str(path), "bench-synthetic", identity={"user": "bench", "agent": "bench"},
                policy={"id": "default", "version": "1", "sha256": "0" * 64})
    j.start(Signer(keys.load_private(pair.private_path)))
    j.append({"type": "session.start", "command": ["bench"], "intent": None})
    for i in range(n - 2):
        j.append({"type": "receipt",
                  "action": {"type": "file.write", "target": f"/work/ws/file-{i}.txt", "syscall": "openat",
                             "pid": 100, "tid": 100, "exe": "/usr/bin/python3", "notif": str(10**15 + i),
                             "flags": 577},
                  "decision": {"result": "allow", "rule": "default", "reason": "profile default"},
                  "outcome": {"executed": True, "return": 3}})
        if i % 5000 == 0:
            time.sleep(0.01)
    j.seal({"type": "session.end", "exit_status": 0, "actions": {}, "decisions": {}, "data_classes": []})
    return path


if __name__ == "__main__":
    sys.exit(main())
