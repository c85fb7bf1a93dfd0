"""A held action as the approver sees it: the snapshot ("view"), its hash, and its shape.

The view is built only from the supervisor's own decode (resolved paths, the pinned
object's inode, the parsed sockaddr, the argv it copied) and never from text the agent
chose to show. Its canonical hash is what an answer must name: an approval applies to
one request id *and* exactly the view that was shown. The supervisor then performs the
action from the same snapshot (pinned fds, copied names), so rewriting the arguments
while the request waits changes nothing.
"""
from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from hashlib import sha256

from aarm_sandbox.journal.canonical import _carry_bytes, canonical
from aarm_sandbox.journal.writer import rfc3339

INTENT_NOTE = "declared by the agent; not verified"
HISTORY_SHOWN = 10
_FILE_TYPES = {stat.S_IFREG: "regular", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
               stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char-device",
               stat.S_IFBLK: "block-device"}


def new_request_id() -> str:
    """Unguessable, so an id seen in one session's output cannot be aimed at another."""
    return "r-" + secrets.token_hex(5)


def object_of(effect) -> dict | None:
    """dev/ino/type of the object the pinned effect will act on (None: it does not exist
    yet, e.g. a file about to be created)."""
    try:
        objfd = getattr(effect, "objfd", -1)
        if objfd is not None and objfd >= 0:
            st = os.fstat(objfd)
        elif getattr(effect, "fd1", -1) >= 0 and getattr(effect, "name1", b""):
            st = os.stat(effect.name1, dir_fd=effect.fd1, follow_symlinks=False)
        elif getattr(effect, "dirfd", -1) >= 0 and getattr(effect, "name", b""):
            st = os.stat(effect.name, dir_fd=effect.dirfd, follow_symlinks=False)
        else:
            return None
    except (OSError, TypeError, ValueError):
        return None
    return {"dev": st.st_dev, "ino": st.st_ino,
            "file_type": _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "other")}


def build_view(request_id: str, session_id: str, kind: str, action, decision, *,
               effect, data_classes: list[str], history, intent: str | None,
               requested: float, expires: float, freeze: bool) -> dict:
    a = {"type": action.type, "target": action.target, "syscall": action.syscall,
         "pid": action.pid, "tid": action.tid, "program": action.exe or None,
         "paths": list(action.paths)}
    d = action.detail
    if "argv" in d:
        a["argv"] = list(d["argv"])
    obj = object_of(effect)
    if obj is not None:
        a["object"] = obj
    if action.dest is not None:
        ip, port, proto, names = action.dest
        a["destination"] = {"address": ip, "port": port, "protocol": proto,
                            "names": sorted(names or ())}
    if d.get("semantic"):
        a["semantic"] = list(d["semantic"])
    for key in ("destination", "source"):         # rename's other path, link's source
        if key in d and key not in a:
            a[key] = d[key]
    view = {"request": request_id, "session": session_id, "kind": kind, "action": a,
            "data_classes": list(data_classes),
            "rule": {"id": decision.rule, "reason": decision.reason},
            "history": relevant_history(action, history),
            "intent": {"text": intent, "note": INTENT_NOTE} if intent else None,
            "requested_at": rfc3339(int(requested * 1e9)), "expires_at": rfc3339(int(expires * 1e9)),
            "freeze": freeze}
    if kind == "defer":
        view["waiting_for"] = list(decision.waiting_for)
    return _carry_bytes(view)


def relevant_history(action, history) -> list[dict]:
    """The session's earlier actions that bear on this one: same type or same paths,
    most recent last (at most HISTORY_SHOWN)."""
    paths = set(action.paths)
    out = []
    for type_, target, result, executed in reversed(history):
        if type_ == action.type or target in paths:
            out.append({"type": type_, "target": target, "result": result, "executed": executed})
            if len(out) == HISTORY_SHOWN:
                break
    out.reverse()
    return out


def view_hash(view: dict) -> str:
    return sha256(canonical(view)).hexdigest()


def shape_of(view: dict) -> str:
    """What "the same request" means for an approval granted for the session: the exact
    action (type, target, every path, program, argv, destination, meaning, rule), not
    who asked or when."""
    a = view["action"]
    shape = {k: a.get(k) for k in ("type", "target", "paths", "program", "argv", "semantic",
                                   "source")}
    dest = a.get("destination")
    if isinstance(dest, dict):
        shape["destination"] = {k: dest.get(k) for k in ("address", "port", "protocol")}
    elif dest is not None:
        shape["destination"] = dest
    shape["rule"] = view["rule"]["id"]
    return sha256(canonical(shape)).hexdigest()


@dataclass
class Pending:
    """One held notification: everything needed to answer it later, from any thread."""
    id: str
    kind: str                       # "step_up" | "defer"
    n: object                       # the backend's Notification
    action: object
    decision: object
    effect: object
    view: dict
    hash: str
    shape: str
    created: float                  # monotonic
    deadline: float                 # monotonic
    deferrals: int = 0
    frozen: bool = False
    journaled: bool = False         # its approval.request record is written
    extra: dict = field(default_factory=dict)
