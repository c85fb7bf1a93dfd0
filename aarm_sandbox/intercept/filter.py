"""Compile the syscall table into a classic-BPF seccomp program (x86_64).

The program is built with libseccomp (loaded through cffi in ABI mode, so neither
libseccomp-dev nor a Python binding is needed) and only *exported*: the C launcher installs
the raw bytes itself with SECCOMP_FILTER_FLAG_NEW_LISTENER, so libseccomp is never asked to
set NO_NEW_PRIVS or to load anything.

Semantics (see decode/syscall_table.py for the table itself):

* default action ALLOW; a foreign architecture (e.g. ``int 0x80`` from a 64-bit process,
  AUDIT_ARCH_I386) -> KILL_PROCESS; the x32 syscall range (nr >= 0x40000000 under
  AUDIT_ARCH_X86_64) -> KILL_PROCESS. libseccomp emits the x32 check itself for a native
  x86_64 filter (``jge 0x40000000`` -> bad-arch action); the single exception it makes is
  nr == -1 (0xffffffff, "skip this syscall" for tracers), which it lets through to the
  normal rules -- here that is ALLOW, and the kernel answers nr -1 with ENOSYS anyway.
  `_self_check` verifies both properties on every compiled program.
* NOTIFY -> SECCOMP_RET_USER_NOTIF, ERRNO(e) -> SECCOMP_RET_ERRNO|e, ALLOW -> no rule.
* syscall numbers KNOWN_MAX_NR+1 .. UNKNOWN_LIMIT-1 that are not in the table -> ENOSYS, so a
  syscall a newer kernel adds starts closed. Numbers >= UNKNOWN_LIMIT (and below the x32
  bit) are left to the default ALLOW on purpose: x86_64 has no native syscall there, the
  kernel itself returns ENOSYS for them, and 512..547 only exist as x32 numbers, which the
  x32 check already kills.
"""
from __future__ import annotations

import functools
import itertools
import os

from aarm_sandbox.decode.syscall_table import (
    KNOWN_MAX_NR, OPEN_SYSCALLS, SYSCALLS, UNKNOWN_LIMIT, ArgCond, FilterRule, SyscallSpec,
    Verdict,
)
from aarm_sandbox.intercept import bpf_eval
from aarm_sandbox.records import FrozenRecord

__all__ = ["FilterError", "compile_filter", "describe_filter", "filter_plan", "PlannedRule",
           "libseccomp_version"]


class FilterError(RuntimeError):
    """The seccomp filter cannot be built (libseccomp missing, or a table rule it rejects)."""


# --- libseccomp ABI (seccomp.h of 2.5.x) --------------------------------------------------
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_NOTIFY = 0x7FC00000
SCMP_ACT_ERRNO_BASE = 0x00050000

# enum scmp_filter_attr
SCMP_FLTATR_ACT_DEFAULT = 1
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_API_TSKIP = 5
SCMP_FLTATR_CTL_LOG = 6
SCMP_FLTATR_CTL_SSB = 7
SCMP_FLTATR_CTL_OPTIMIZE = 8     # 2.5.0+: 1 = priority-sorted list, 2 = binary tree

# enum scmp_compare
SCMP_CMP_NE = 1
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7

# API level 5 = SCMP_ACT_NOTIFY / NEW_LISTENER supported (also covers KILL_PROCESS, level 3)
_NOTIFY_API_LEVEL = 5

_CDEF = """
typedef void *scmp_filter_ctx;
typedef uint64_t scmp_datum_t;
struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
struct scmp_arg_cmp {
    unsigned int arg;     /* argument index, 0..5 */
    int op;               /* enum scmp_compare (an int-sized C enum) */
    scmp_datum_t datum_a;
    scmp_datum_t datum_b;
};
const struct scmp_version *seccomp_version(void);
unsigned int seccomp_api_get(void);
int seccomp_api_set(unsigned int level);
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
"""

_LIB_NAMES = ("libseccomp.so.2", "libseccomp.so")
_INSTALL_HINT = ("install the libseccomp runtime library: `apt-get install libseccomp2` "
                 "(Debian/Ubuntu) or `dnf install libseccomp` (Fedora/RHEL)")

_U64 = (1 << 64) - 1
_MAX_RULES_PER_GROUP = 256


@functools.lru_cache(maxsize=1)
def _load():
    try:
        import cffi
    except ImportError as exc:  # pragma: no cover - cffi is a hard dependency
        raise FilterError(f"cffi is required to build the seccomp filter: {exc}") from exc
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    errors = []
    for name in _LIB_NAMES:
        try:
            lib = ffi.dlopen(name)
            break
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    else:
        raise FilterError("cannot load libseccomp (" + "; ".join(errors) + "); " + _INSTALL_HINT)
    try:
        ver = lib.seccomp_version()
        version = (ver.major, ver.minor, ver.micro)
    except AttributeError as exc:
        raise FilterError(f"libseccomp is too old ({exc}); need >= 2.5; " + _INSTALL_HINT) from exc
    if version < (2, 5, 0):
        raise FilterError(f"libseccomp {'.'.join(map(str, version))} is too old (need >= 2.5 "
                          "for SCMP_ACT_NOTIFY and CTL_OPTIMIZE); " + _INSTALL_HINT)
    # libseccomp refuses SCMP_ACT_NOTIFY unless its runtime probe of *this* process says the
    # kernel supports user notification. That probe calls seccomp(2) and fails when the
    # compiler itself runs under a seccomp filter (e.g. inside our own sandbox, which makes
    # seccomp(NEW_LISTENER) EPERM). We only export the program, never load it here, so the
    # kernel feature level of the build process is irrelevant: pin the API level instead.
    if lib.seccomp_api_get() < _NOTIFY_API_LEVEL:
        rc = lib.seccomp_api_set(_NOTIFY_API_LEVEL)
        if rc < 0:
            raise FilterError(f"libseccomp refuses API level {_NOTIFY_API_LEVEL}: "
                              f"{os.strerror(-rc)}")
    return ffi, lib, version


def libseccomp_version() -> tuple[int, int, int]:
    return _load()[2]


# --- lowering the table into libseccomp rules ---------------------------------------------
Comparison = tuple[int, int, int, int]          # (arg, SCMP_CMP_*, datum_a, datum_b)


class PlannedRule(FrozenRecord):
    """One seccomp_rule_add_array call: all comparisons AND'ed (at most one per argument)."""
    __slots__ = ("name", "nr", "action", "comparisons")

    def __init__(self, name: str, nr: int, action: int, comparisons: tuple[Comparison, ...] = ()):
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "nr", nr)
        setattr_(self, "action", action)
        setattr_(self, "comparisons", comparisons)

    def __repr__(self) -> str:
        # Part of the filter cache key (`_cache_path`, every run): spelled out (faster than
        # the generic one), the text the frozen dataclass this class replaced printed.
        return (f"PlannedRule(name={self.name!r}, nr={self.nr!r}, action={self.action!r}, "
                f"comparisons={self.comparisons!r})")


def _bits(mask: int) -> list[int]:
    return [b for b in range(64) if mask >> b & 1]


def _avoid_points(mask: int, points: set[int], where: str) -> list[tuple[int, int]]:
    """Masked-eq terms (mask, value), OR'ed, equivalent to ``x & mask not in points``.

    libseccomp has no masked "not equal", and a rule may compare each argument only once
    (2.5.4 returns -EINVAL for e.g. `personality`'s "ne QUERY and ne 0"), so a negation is
    rewritten as "differs from the excluded value(s) in some bit":

    * one point v: OR over bits b of mask: bit b == ~v_b               (|mask| terms)
    * two points v1, v2: let D be the bits where they differ, E the rest of the mask.
      x avoids both  <=>  x differs from v1 on some bit of E                (|E| terms)
                      or  y = (x ^ v1) restricted to D is neither 0 nor all of D.
      y is "not constant" iff for some i, y has a 1 at d_i and a 0 at d_(i+1 mod |D|)
      (walk the cycle d_0 -> d_1 -> ... -> d_0: a non-constant y must step from 1 to 0
      somewhere), each step being one two-bit masked-eq term               (|D| terms,
      none when |D| == 1: then both values of that bit are excluded).
      For personality (QUERY=0xffffffff, 0) that is 32 rules of one comparison each.
    """
    if not points:
        return [(0, 0)]
    if len(points) == 1:
        (v,) = points
        return [(1 << b, ~v & (1 << b)) for b in _bits(mask)]
    if len(points) == 2:
        v1, v2 = sorted(points)
        diff = (v1 ^ v2) & mask
        same = mask & ~diff
        terms = [(1 << b, ~v1 & (1 << b)) for b in _bits(same)]
        d = _bits(diff)
        if len(d) > 1:
            for i, a in enumerate(d):
                c = d[(i + 1) % len(d)]
                terms.append(((1 << a) | (1 << c), (~v1 & (1 << a)) | (v1 & (1 << c))))
        return terms
    raise FilterError(f"{where}: more than two 'ne' values on one argument is not supported")


def _lower_arg(arg: int, conds: list[ArgCond], where: str) -> list[Comparison]:
    """All conditions of one group on one argument -> OR'ed single comparisons."""
    pmask = pval = 0
    neg_masks: set[int] = set()
    neg_points: set[int] = set()
    for c in conds:
        mask = c.mask & _U64
        if mask == 0 or c.mask != mask:
            raise FilterError(f"{where}: mask 0x{c.mask:x} is not a non-zero 64-bit value")
        if c.value < 0 or c.value & ~mask:
            raise FilterError(f"{where}: value 0x{c.value:x} has bits outside mask 0x{mask:x}"
                              " (the condition could never match as written)")
        if c.op in ("masked_eq", "eq"):
            both = pmask & mask
            if pval & both != c.value & both:
                raise FilterError(f"{where}: contradictory conditions on arg {arg}")
            pmask |= mask
            pval |= c.value
        elif c.op == "ne":
            neg_masks.add(mask)
            neg_points.add(c.value)
        else:
            raise FilterError(f"{where}: unknown comparison {c.op!r}")

    if not neg_points:
        if pmask == _U64:
            return [(arg, SCMP_CMP_EQ, pval, 0)]
        # 32-bit "eq" is a masked_eq through the width mask: upper-half junk is ignored.
        return [(arg, SCMP_CMP_MASKED_EQ, pmask, pval)]
    if pmask == 0 and neg_masks == {_U64} and len(neg_points) == 1:
        return [(arg, SCMP_CMP_NE, next(iter(neg_points)), 0)]
    if len(neg_masks) != 1:
        raise FilterError(f"{where}: 'ne' conditions with different masks on arg {arg}")
    out: list[Comparison] = []
    for m, v in _avoid_points(next(iter(neg_masks)), neg_points, where):
        both = m & pmask
        if v & both != pval & both:
            continue                       # this alternative contradicts the eq part
        cmp = (arg, SCMP_CMP_MASKED_EQ, pmask | m, pval | v)
        if cmp not in out:
            out.append(cmp)
    if not out:
        raise FilterError(f"{where}: conditions on arg {arg} can never be satisfied")
    return out


def _lower_group(group: tuple[ArgCond, ...], where: str) -> list[tuple[Comparison, ...]]:
    by_arg: dict[int, list[ArgCond]] = {}
    for c in group:
        if not 0 <= c.arg < 6:
            raise FilterError(f"{where}: argument index {c.arg} out of range 0..5")
        by_arg.setdefault(c.arg, []).append(c)
    per_arg = [_lower_arg(a, cs, where) for a, cs in sorted(by_arg.items())]
    rules = list(itertools.product(*per_arg))
    if len(rules) > _MAX_RULES_PER_GROUP:
        raise FilterError(f"{where}: condition group expands to {len(rules)} rules")
    return rules


def _action(rule: FilterRule, where: str) -> int:
    if rule.verdict is Verdict.NOTIFY:
        return SCMP_ACT_NOTIFY
    if rule.verdict is Verdict.ERRNO:
        if not 0 < rule.errno <= 4095:
            raise FilterError(f"{where}: errno {rule.errno} out of range 1..4095")
        return SCMP_ACT_ERRNO_BASE | rule.errno
    raise FilterError(f"{where}: no action for verdict {rule.verdict!r}")


def _effective_rules(spec: SyscallSpec, notify_reads: bool) -> tuple[FilterRule, ...]:
    if notify_reads and spec.name in OPEN_SYSCALLS:
        # every open is notified, reads included
        return tuple(FilterRule(Verdict.NOTIFY) if r.verdict is Verdict.NOTIFY else r
                     for r in spec.rules)
    return spec.rules


@functools.lru_cache(maxsize=None)
def filter_plan(notify_reads: bool = False) -> tuple[PlannedRule, ...]:
    """The exact list of libseccomp rules `compile_filter` adds (useful for debugging)."""
    if not KNOWN_MAX_NR < UNKNOWN_LIMIT <= 0x40000000:
        raise FilterError("syscall_table: need KNOWN_MAX_NR < UNKNOWN_LIMIT <= 0x40000000")
    plan: list[PlannedRule] = []
    seen: dict[int, str] = {}
    for spec in SYSCALLS:
        if spec.nr in seen:
            raise FilterError(f"syscall_table: nr {spec.nr} listed as both {seen[spec.nr]!r} "
                              f"and {spec.name!r}")
        if not 0 <= spec.nr <= KNOWN_MAX_NR:
            raise FilterError(f"syscall_table: {spec.name} nr {spec.nr} outside 0..KNOWN_MAX_NR")
        seen[spec.nr] = spec.name
        rules = _effective_rules(spec, notify_reads)
        verdicts = {r.verdict for r in rules}
        if Verdict.ALLOW in verdicts and len(verdicts) > 1:
            # ALLOW is the default action and libseccomp refuses rules with the default
            # action (-EACCES), so "allow when X, else deny" cannot be expressed.
            raise FilterError(f"{spec.name}: ALLOW rules cannot be mixed with other verdicts")
        for rule in rules:
            if rule.verdict is Verdict.ALLOW:
                continue
            where = f"{spec.name}({spec.nr})"
            action = _action(rule, where)
            if not rule.when:
                plan.append(PlannedRule(spec.name, spec.nr, action))
                continue
            for group in rule.when:
                if not group:
                    raise FilterError(f"{where}: empty condition group (use when=() for "
                                      "an unconditional rule)")
                for comparisons in _lower_group(group, where):
                    plan.append(PlannedRule(spec.name, spec.nr, action, comparisons))
    enosys = SCMP_ACT_ERRNO_BASE | 38          # ENOSYS
    for nr in range(KNOWN_MAX_NR + 1, UNKNOWN_LIMIT):
        if nr not in seen:
            plan.append(PlannedRule(f"unknown_{nr}", nr, enosys))
    return tuple(plan)


# --- compiling ----------------------------------------------------------------------------
def _rc_check(rc: int, what: str) -> None:
    if rc < 0:
        raise FilterError(f"libseccomp: {what} failed: {os.strerror(-rc)} ({rc})")


@functools.lru_cache(maxsize=None)
def compile_filter(notify_reads: bool = False, use_cache: bool = True) -> bytes:
    """Return the x86_64 seccomp program (array of struct sock_filter) for the table.

    `notify_reads=True` notifies every open/openat (reads too); the default notifies only
    opens with a write-intent flag. The exported program is cached per user, keyed by the
    exact rule plan and the libseccomp library file, and self-checked again when loaded.
    """
    notify_reads = bool(notify_reads)
    plan = filter_plan(notify_reads)
    cache = _cache_path(plan) if use_cache else None
    if cache is not None:
        try:
            program = cache.read_bytes()
            _self_check(program)
            return program
        except (OSError, FilterError):
            pass
    program = _compile(plan)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(program)
            os.replace(tmp, cache)
        except OSError:
            pass
    return program


def _cache_path(plan):
    import hashlib

    from aarm_sandbox.xdg import cache_dir
    lib_id = ""
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib"):
        p = os.path.join(d, "libseccomp.so.2")
        try:
            st = os.stat(p)
        except OSError:
            continue
        lib_id = f"{os.path.realpath(p)}:{st.st_size}:{st.st_mtime_ns}"
        break
    if not lib_id:
        return None
    key = hashlib.sha256(f"filter-v1|{lib_id}|{plan!r}".encode()).hexdigest()
    return cache_dir() / "filters" / f"{key}.bpf"


def _compile(plan) -> bytes:
    ffi, lib, _ = _load()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if ctx == ffi.NULL:
        raise FilterError("libseccomp: seccomp_init failed")
    try:
        _rc_check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS),
                  "set ACT_BADARCH=KILL_PROCESS")
        _rc_check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "clear CTL_NNP")
        _rc_check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2),
                  "set CTL_OPTIMIZE=2 (binary tree)")
        for rule in plan:
            n = len(rule.comparisons)
            arr = ffi.new("struct scmp_arg_cmp[]", max(n, 1))
            for i, (arg, op, a, b) in enumerate(rule.comparisons):
                arr[i].arg, arr[i].op, arr[i].datum_a, arr[i].datum_b = arg, op, a, b
            _rc_check(lib.seccomp_rule_add_array(ctx, rule.action, rule.nr, n,
                                                 arr if n else ffi.NULL),
                      f"rule for {rule.name}({rule.nr}) action 0x{rule.action:08x} "
                      f"{rule.comparisons}")
        fd = os.memfd_create("aarm-seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _rc_check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while size > 0:
                chunk = os.read(fd, size)
                if not chunk:
                    break
                chunks.append(chunk)
                size -= len(chunk)
            program = b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    _self_check(program)
    return program


def _self_check(program: bytes) -> None:
    """Properties we rely on but libseccomp decides: fail loudly if a version changes them."""
    try:
        bpf_eval.validate(program)
        kill = bpf_eval.SECCOMP_RET_KILL_PROCESS
        checks = {
            "foreign arch (i386) is killed":
                bpf_eval.evaluate(program, 10, arch=bpf_eval.AUDIT_ARCH_I386) == kill,
            "x32 syscall range is killed":
                all(bpf_eval.evaluate(program, 0x40000000 | nr) == kill
                    for nr in (0, 2, 59, 87, 0x3FFFFFFE)),
            "default action is allow":
                bpf_eval.evaluate(program, 39) == bpf_eval.SECCOMP_RET_ALLOW,   # getpid
        }
    except bpf_eval.BpfError as exc:
        raise FilterError(f"libseccomp produced an invalid program: {exc}") from exc
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise FilterError("compiled seccomp program fails self-check: " + ", ".join(failed))


def describe_filter(program: bytes) -> str:
    """Disassemble a program, one instruction per line, for debugging."""
    lines = bpf_eval.disassemble(program)
    return f"; {len(lines)} instructions\n" + "\n".join(lines)
