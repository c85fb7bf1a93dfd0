"""The semantic action: what the kernel is about to do, named the way a person would.

An Action is built only from the supervisor's own copy of the arguments and from resolved
kernel objects (canonical paths of pinned fds, parsed sockaddrs), never from agent text.
"""
from __future__ import annotations

# Action types the runtime core emits. Policy rules match these with globs ("file.*").
FILE_READ = "file.read"
FILE_WRITE = "file.write"          # open for writing an existing file (incl. O_TRUNC)
FILE_CREATE = "file.create"        # open/creat that creates, mknod of a regular file
FILE_DELETE = "file.delete"        # unlink, rmdir
FILE_RENAME = "file.rename"
FILE_LINK = "file.link"
FILE_SYMLINK = "file.symlink"
FILE_MKDIR = "file.mkdir"
FILE_MKNOD = "file.mknod"
FILE_TRUNCATE = "file.truncate"
FILE_CHMOD = "file.chmod"
FILE_CHOWN = "file.chown"
FILE_XATTR = "file.xattr"
FILE_UTIME = "file.utime"
PROCESS_EXEC = "process.exec"
NET_CONNECT = "net.connect"
NET_BIND = "net.bind"
NET_SEND = "net.send"
DNS_QUERY = "dns.query"            # a name looked up through the session's DNS stub

SYSCALL_TYPES = (FILE_READ, FILE_WRITE, FILE_CREATE, FILE_DELETE, FILE_RENAME, FILE_LINK,
                 FILE_SYMLINK, FILE_MKDIR, FILE_MKNOD, FILE_TRUNCATE, FILE_CHMOD, FILE_CHOWN,
                 FILE_XATTR, FILE_UTIME, PROCESS_EXEC, NET_CONNECT, NET_BIND, NET_SEND, DNS_QUERY)

# What an exec *means* (actions/exec_catalog.py classifies argv into these; the file.*
# ones it also produces are the syscall-level types above). A profile with rules on any
# of these turns exec classification on.
SEMANTIC_ONLY_TYPES = (
    "cloud.delete", "container.delete", "db.ddl", "db.other", "db.query", "db.script",
    "db.write", "exec.opaque", "infra.change", "infra.delete", "infra.destroy", "net.http",
    "pkg.install", "vcs.branch.delete", "vcs.discard", "vcs.push", "vcs.push.delete",
    "vcs.push.force", "vcs.rewrite")

ALL_TYPES = SYSCALL_TYPES + SEMANTIC_ONLY_TYPES


class Action:
    """(A plain slotted class rather than a dataclass: built for every decision and
    defined on the startup path, where each dataclass definition costs ~0.5 ms.)"""
    __slots__ = ("type", "target", "syscall", "pid", "tid", "flags", "paths", "detail",
                 "counted", "notif", "exe", "dest", "budget_unit", "envp", "exec_basis")

    def __init__(self, type: str, target: str, syscall: str, pid: int, tid: int,
                 flags: int = 0, paths: tuple[str, ...] = (), detail: dict | None = None,
                 counted: list | None = None, notif: int = 0, exe: str | None = "",
                 dest: tuple | None = None):
        self.type = type
        self.target = target            # canonical path / address the kernel will touch
        self.syscall = syscall
        self.pid = pid                  # thread-group id (supervisor's pid namespace)
        self.tid = tid
        self.flags = flags
        self.paths = paths              # every path the operation touches (rename: src and dst)
        # argv for exec, destination for rename, ...
        self.detail = {} if detail is None else detail
        self.counted = counted          # count_over rules this action matched (filled by the engine)
        self.notif = notif              # the seccomp notification id
        self.exe = exe                  # the acting program ("" = not looked up, None = gone)
        self.dest = dest                # inet destination (ip, port, proto, names), not journaled
        self.budget_unit = False        # holds a unit of the fast path's count budget
        self.envp = 0                   # exec: the environment array's address in the caller
        # exec: what its classification read from the caller (enforce.exec_verify.ExecBasis),
        # checked again in the exec stop; None when no argv could have changed the decision
        self.exec_basis = None

    def as_record(self) -> dict:
        rec = {"type": self.type, "target": self.target, "syscall": self.syscall,
               "pid": self.pid, "tid": self.tid, "exe": self.exe, "notif": str(self.notif)}
        if self.flags:
            rec["flags"] = self.flags
        if self.detail:
            rec.update(self.detail)
        return rec
