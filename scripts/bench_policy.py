#!/usr/bin/env python3
"""Policy evaluation benchmark: one decision with a 200-rule profile and a 10k-action history.

Run it as `scripts/bench policy [--rules N] [--history N] [--actions N]`.

A generated profile extends `default` with N rules over every action type (path globs
under the workspace and elsewhere, `outside` rules, `existed_at_start`, counted rules,
semantic types); a session context holds a history of N actions (created and removed
paths, rule counts). Then the engine decides a mix of actions: file operations on fresh
paths (so the memo of (rule, type) decisions does not hide the matching), connects and
execs. Reported: p50/p90/p99 of one `PolicyEngine.decide` call, timed with
perf_counter_ns around each call.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_P50_US = 2.0
FILE_TYPES = ["file.write", "file.create", "file.delete", "file.rename", "file.chmod", "file.truncate"]


def make_profile(n_rules: int, path: Path) -> None:
    rng = random.Random(1)
    lines = ["id: bench-200", "extends: default", "rules:" if n_rules else "rules: []"]
    for i in range(n_rules):
        kind = i % 5
        t = rng.choice(FILE_TYPES)
        if kind == 0:
            body = f'    actions: [{t}]\n    paths: ["{{workspace}}/dir{i}/**"]\n    decision: deny'
        elif kind == 1:
            body = f'    actions: ["file.*"]\n    paths: ["**/*.secret{i}"]\n    decision: step_up'
        elif kind == 2:
            body = (f'    actions: [{t}]\n    paths: ["{{workspace}}/src{i}/**"]\n'
                    f'    existed_at_start: true\n    decision: step_up')
        elif kind == 3:
            body = (f'    actions: [file.delete]\n    paths: ["{{workspace}}/build{i}/**"]\n'
                    f'    count_over: 50\n    decision: step_up')
        else:
            body = f'    actions: [vcs.push.force, db.ddl]\n    decision: deny'
        lines.append(f"  - id: r{i}\n{body}\n    reason: generated rule {i}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--history", type=int, default=10_000)
    ap.add_argument("--actions", type=int, default=50_000)
    args = ap.parse_args()
    from types import SimpleNamespace

    from aarm_sandbox.actions.action import Action
    from aarm_sandbox.cli.run import build_policy
    from aarm_sandbox.context.session import SessionContext
    from aarm_sandbox.policy.engine import PolicyEngine

    tmp = Path(tempfile.mkdtemp(prefix="aarm-bench-policy-"))
    ws = tmp / "ws"
    ws.mkdir()
    prof = tmp / "bench-200.yaml"
    make_profile(args.rules, prof)
    policy, _ = build_policy(SimpleNamespace(profile=str(prof), allow_write=[], allow_net=[]),
                             str(ws), str(tmp / "sessiontmp"))
    engine = PolicyEngine(policy)
    ctx = SessionContext(session_id="bench")
    rng = random.Random(2)
    for i in range(args.history):
        p = f"{ws}/hist/{i}/f{rng.randrange(1000)}.txt"
        (ctx.created_paths if i % 2 else ctx.removed_paths).add(p)
        ctx.rule_counts[f"r{rng.randrange(args.rules)}"] += 1
    rules_total = sum(len(v) for v in policy.rules_by_type.values())
    acts = []
    for i in range(args.actions):
        r = rng.random()
        if r < 0.8:
            t = rng.choice(FILE_TYPES)
            d = rng.choice(["src", "dir", "build", "tmp", "other"])
            path = f"{ws}/{d}{rng.randrange(args.rules)}/sub/file{i}.py"
            if rng.random() < 0.1:
                path = f"/etc/conf{i}"
            acts.append(Action(t, path, "openat", 1, 1, paths=(path,)))
        elif r < 0.9:
            acts.append(Action("net.connect", "10.0.0.1:443", "connect", 1, 1))
        else:
            acts.append(Action("process.exec", "/usr/bin/git", "execve", 1, 1, paths=("/usr/bin/git",)))
    samples = []
    clock = time.perf_counter_ns
    for a in acts:
        t0 = clock()
        engine.decide(a, ctx)
        samples.append(clock() - t0)
    samples.sort()
    q = lambda f: samples[min(len(samples) - 1, int(len(samples) * f))] / 1000
    print(f"policy: {rules_total} compiled rule entries ({args.rules} generated + default's), "
          f"history {args.history} actions, {len(acts)} decisions")
    print(f"decide(): p50 {q(0.5):.2f} us  p90 {q(0.9):.2f} us  p99 {q(0.99):.2f} us  "
          f"mean {statistics.fmean(samples) / 1000:.2f} us  (target p50 <= {TARGET_P50_US} us): "
          f"{'PASS' if q(0.5) <= TARGET_P50_US else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
