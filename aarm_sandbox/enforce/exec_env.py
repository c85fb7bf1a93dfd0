"""MODIFY/scrub_env: the environment an exec passes on, with secrets and loader hooks removed.

An exec cannot be emulated (it must happen in the target), and seccomp user notification
cannot change a syscall's arguments, but the envp *array* the arguments point to is
ordinary memory of the target: the supervisor rewrites it in place (the kept pointers,
then NULL) before letting the exec continue, so the new program starts without them. The
strings themselves are left alone. A thread of the same process could still rewrite
the array or a kept string before the kernel copies them, so the supervisor attaches to
the calling thread before letting the exec go on (exec_argv.seize_for_exec) and checks
the new program's /proc/PID/environ in its exec stop, before it runs an instruction: with
a removed name in it, it is killed there (`env_clean`).
"""
from __future__ import annotations

import errno
import fnmatch

from aarm_sandbox.decode.memory import DecodeError, read_path_unbounded, read_u64_array, write_mem

DEFAULT_REMOVE = ("LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "LD_DEBUG*", "*TOKEN*",
                  "*SECRET*", "*PASSWORD*", "*PASSWD*", "AWS_*", "*_API_KEY", "*_ACCESS_KEY*",
                  "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_*", "SSH_AUTH_SOCK",
                  # code a program's runtime loads on its own: as good as LD_PRELOAD
                  "BASH_ENV", "ENV", "NODE_OPTIONS", "PYTHONPATH", "PYTHONSTARTUP",
                  "PYTHONHOME", "PERL5OPT", "PERL5LIB", "RUBYOPT", "RUBYLIB", "GLIBC_TUNABLES",
                  "GIT_CONFIG_*", "GIT_SSH_COMMAND", "GIT_EXEC_PATH", "JAVA_TOOL_OPTIONS",
                  "_JAVA_OPTIONS")
MAX_ENV = 8192


def scrub(tid: int, envp: int, patterns: tuple[str, ...] = ()) -> list[str]:
    """Remove every variable whose name matches a pattern from the target's envp array.
    Returns the removed names; raises DecodeError when the array cannot be rewritten (the
    caller then refuses the exec: fail closed)."""
    if envp == 0:
        return []
    pats = patterns or DEFAULT_REMOVE
    pointers: list[int] = []
    while True:
        if len(pointers) >= MAX_ENV:
            raise DecodeError(errno.E2BIG, "environment too large to scrub")
        (p,) = read_u64_array(tid, envp + 8 * len(pointers), 1)
        if p == 0:
            break
        pointers.append(p)
    keep, removed = [], []
    for p in pointers:
        entry = read_path_unbounded(tid, p)
        name = entry.split(b"=", 1)[0].decode("utf-8", "surrogateescape")
        if any(fnmatch.fnmatchcase(name, pat) for pat in pats):
            removed.append(name)
        else:
            keep.append(p)
    if removed:
        write_mem(tid, envp, b"".join(p.to_bytes(8, "little") for p in keep) + b"\0" * 8)
    return removed


def matching_names(environ: bytes, patterns: tuple[str, ...] = ()) -> list[str]:
    """Names in a NUL-separated environment block that match a pattern."""
    pats = patterns or DEFAULT_REMOVE
    out = []
    for entry in environ.split(b"\0"):
        if entry:
            name = entry.split(b"=", 1)[0].decode("utf-8", "surrogateescape")
            if any(fnmatch.fnmatchcase(name, pat) for pat in pats):
                out.append(name)
    return out


def env_clean(pid: int, patterns: tuple[str, ...] = ()) -> bool:
    """The program pid now runs has none of the names (read in its exec stop)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return not matching_names(f.read(), patterns)
