"""`aarm-sandbox explain --profile P TYPE TARGET...`: what the profile decides and why.

The same engine and destination policy `run` uses, on actions given on the command line:
every rule that applies to the type, whether it matched, which one won (most
restrictive), and the final decision. The actions are one session, in order: what an
allowed one did (read sensitive data, count toward a rule) is context for the next, so a
composition rule can be shown at work.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from types import SimpleNamespace

from aarm_sandbox.actions import action as A
from aarm_sandbox.actions.action import Action
from aarm_sandbox.context.session import SessionContext


def explain(profile: str | None, items: list[str], workspace: str | None, allow_net: list[str],
            sensitive: list[str] = (), context: list[str] = (), counts: list[str] = ()) -> int:
    from aarm_sandbox.cli.run import (UsageError, _destinations, build_policy, label_sensitive,
                                      parse_context)
    from aarm_sandbox.policy.engine import PolicyEngine
    if not items or len(items) % 2:
        print("aarm-sandbox: explain takes pairs: TYPE TARGET [TYPE TARGET]... "
              f"(types: {', '.join(A.ALL_TYPES)})", file=sys.stderr)
        return 125
    ws = os.path.realpath(workspace or os.getcwd())
    args = SimpleNamespace(profile=profile, allow_write=[], allow_net=allow_net)
    policy, loaded = build_policy(args, ws, "/tmp/aarm-SESSION")
    # (as in a session with an approver: a step_up shows as held, not as the denial it
    # becomes when nobody can answer)
    engine = PolicyEngine(policy, hold_step_up=True, hold_defer=True)
    ctx = SessionContext(session_id="explain")
    label_sensitive(ctx, policy, sensitive)
    try:
        ctx.facts.update(parse_context(context))
    except UsageError as e:
        print(f"aarm-sandbox: {e}", file=sys.stderr)
        return 125
    counting = {r.id: r.count_over for rules in policy.rules_by_type.values() for r in rules
                if r.count_over is not None}
    for item in counts:
        rid, sep, n = item.partition("=")
        if not sep or not (n.isascii() and n.isdigit()) or rid not in counting:
            print(f"aarm-sandbox: --count {item!r}: expected RULE=N, RULE a count rule of the "
                  f"profile ({', '.join(sorted(counting)) or 'it has none'})", file=sys.stderr)
            return 125
        count = min(int(n), counting[rid] + 1)      # (more changes nothing)
        ctx.rule_counts[rid] = count
        ctx.rule_times[rid] = deque([time.monotonic()] * count)
    try:
        dests = _destinations(policy.profile.settings, args)
    except UsageError as e:
        print(f"aarm-sandbox: {e}", file=sys.stderr)
        return 125
    print(f"profile {policy.profile.id} ({loaded.source}), workspace {ws}")
    for type_, target in zip(items[::2], items[1::2]):
        if type_ not in A.ALL_TYPES:
            print(f"aarm-sandbox: unknown action type {type_!r}; known: {', '.join(A.ALL_TYPES)}",
                  file=sys.stderr)
            return 125
        action = _action(type_, target, ws, dests)
        print(f"\n{type_} {action.target!r}")
        if "egress" in action.detail:
            print(f"  destination policy: {action.detail['egress']} — {action.detail['egress_reason']}")
        trace = engine.trace(action, ctx)
        if not trace:
            print("  no rule applies to this type")
        for rid, result, matched in trace:
            print(f"  {'MATCH' if matched else '  -  '} {rid:28} {result}")
        d = engine.decide(action, ctx)
        if action.detail.get("egress") == "deny":
            print(f"  => deny [egress] {action.detail['egress_reason']}")
            continue
        print(f"  => {d.result.value} [{d.rule}] {d.reason}"
              + (f" (errno {_errname(d.errno)})" if d.errno and d.result.value not in
                 ("allow", "modify") else ""))
        _learn(action, ctx, d.result.value in ("allow", "modify"))
    return 0


def _learn(action: Action, ctx: SessionContext, performed: bool) -> None:
    """What the session knows after the decision, as the supervisor records it: the data
    classes the action touched (decided either way), and for a performed action its read,
    its count toward count rules (not deleting the session's own files), the program."""
    classes = ctx.classes_of(action.paths)
    if classes and not set(classes) <= ctx.data_classes:
        ctx.data_classes.update(classes)
        print(f"  (the session now holds: {', '.join(sorted(ctx.data_classes))})")
    if not performed:
        return
    if classes and action.type == A.FILE_READ and ctx.tainted is None:
        ctx.tainted = action.target
    ctx.executed(action)


def _action(type_: str, target: str, ws: str, dests) -> Action:
    if type_.startswith("file.") or type_ == A.PROCESS_EXEC:
        path = os.path.normpath(os.path.join(ws, os.path.expanduser(target)))
        return Action(type_, path, "(explain)", 0, 0, paths=(path,))
    if type_ in (A.NET_CONNECT, A.NET_SEND) and not target.startswith("unix:"):
        return _net_action(type_, target, dests)
    if target.startswith("unix:"):
        path = os.path.normpath(os.path.join(ws, target[5:]))
        return Action(type_, "unix:" + path, "(explain)", 0, 0, paths=(path,))
    return Action(type_, target, "(explain)", 0, 0)


def _net_action(type_: str, target: str, dests) -> Action:
    import ipaddress
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        names = frozenset()
    except ValueError:                      # a name: judged as the stub would resolve it
        import socket
        names = frozenset({host.lower().rstrip(".")})
        try:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
        except OSError:
            ip = ipaddress.ip_address("0.0.0.0")
    v = dests.decide(ip, int(port or 0), "tcp", names)
    detail = {"egress": v.kind, "egress_reason": v.reason}
    return Action(type_, target, "(explain)", 0, 0, detail=detail)


def _errname(e: int) -> str:
    import errno
    return errno.errorcode.get(e, str(e))
