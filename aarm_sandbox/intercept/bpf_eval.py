"""A small, exact classic-BPF interpreter for seccomp programs.

Used by the golden filter tests (and by filter.py's post-export self-check) to run the
program libseccomp produced against a synthetic ``struct seccomp_data`` without loading it
into a kernel. It implements exactly the instruction subset the kernel accepts for seccomp
(``seccomp_check_filter`` in kernel/seccomp.c) with the kernel's semantics, and raises
:class:`BpfError` on anything the kernel would reject at load time or that would be
undefined at run time (out-of-range jumps, unknown opcodes, falling off the end, reads of
unwritten scratch memory, misaligned/out-of-range loads).

``struct seccomp_data`` (64 bytes, little-endian on x86_64)::

    0   int   nr
    4   u32   arch
    8   u64   instruction_pointer
    16  u64   args[6]         (each as two 32-bit words: lo at +0, hi at +4)
"""
from __future__ import annotations

import struct

__all__ = [
    "BpfError", "evaluate", "action_of", "kernel_caches_allow", "seccomp_data", "decode", "validate",
    "SECCOMP_RET_KILL_PROCESS", "SECCOMP_RET_KILL_THREAD", "SECCOMP_RET_TRAP",
    "SECCOMP_RET_ERRNO", "SECCOMP_RET_USER_NOTIF", "SECCOMP_RET_TRACE", "SECCOMP_RET_LOG",
    "SECCOMP_RET_ALLOW", "AUDIT_ARCH_X86_64", "AUDIT_ARCH_I386",
]

# --- seccomp return values (include/uapi/linux/seccomp.h) --------------------------------
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_DATA = 0x0000FFFF

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

SECCOMP_DATA_SIZE = 64
BPF_MEMWORDS = 16
BPF_MAXINSNS = 4096

# --- classic BPF opcode fields (include/uapi/linux/filter.h, bpf_common.h) ---------------
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH, BPF_NEG = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80)
BPF_MOD, BPF_XOR = 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K, BPF_X = 0x00, 0x08
BPF_A = 0x10                       # BPF_RET source: accumulator
BPF_TAX, BPF_TXA = 0x00, 0x80

_M32 = 0xFFFFFFFF
_INSN = struct.Struct("<HBBI")

_ALU_NAMES = {BPF_ADD: "add", BPF_SUB: "sub", BPF_MUL: "mul", BPF_DIV: "div", BPF_OR: "or",
              BPF_AND: "and", BPF_LSH: "lsh", BPF_RSH: "rsh", BPF_XOR: "xor"}
_JMP_NAMES = {BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge", BPF_JSET: "jset"}


class BpfError(ValueError):
    """The program is not one the kernel would accept, or ran into undefined behaviour."""


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    """Split a program into (code, jt, jf, k) tuples."""
    if len(program) % _INSN.size:
        raise BpfError(f"program length {len(program)} is not a multiple of 8")
    return [_INSN.unpack_from(program, off) for off in range(0, len(program), _INSN.size)]


def seccomp_data(nr: int, arch: int = AUDIT_ARCH_X86_64, args=(0,) * 6, ip: int = 0) -> bytes:
    """Pack a ``struct seccomp_data``; negative values are taken as two's complement."""
    args = tuple(args)
    if len(args) > 6:
        raise ValueError("at most 6 syscall arguments")
    args = args + (0,) * (6 - len(args))
    return struct.pack("<IIQ6Q", nr & _M32, arch & _M32, ip & (2**64 - 1),
                       *(a & (2**64 - 1) for a in args))


def validate(program: bytes) -> None:
    """Static checks the kernel does at load time (bpf_check_classic + seccomp_check_filter)."""
    insns = decode(program)
    n = len(insns)
    if not 0 < n <= BPF_MAXINSNS:
        raise BpfError(f"program has {n} instructions (must be 1..{BPF_MAXINSNS})")
    for pc, (code, jt, jf, k) in enumerate(insns):
        cls = code & 7
        if cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                if pc + 1 + k >= n:
                    raise BpfError(f"{pc}: ja target out of range")
            elif pc + 1 + max(jt, jf) >= n:
                raise BpfError(f"{pc}: conditional jump target out of range")
        _check_opcode(pc, code, k)
    if insns[-1][0] & 7 != BPF_RET:
        raise BpfError("last instruction is not a return")


def _check_opcode(pc: int, code: int, k: int) -> None:
    cls = code & 7
    ok = False
    if code > 0xFF:
        pass
    elif cls == BPF_LD:
        ok = code in (BPF_LD | BPF_W | BPF_ABS, BPF_LD | BPF_W | BPF_LEN,
                      BPF_LD | BPF_IMM, BPF_LD | BPF_MEM)
        if code == BPF_LD | BPF_W | BPF_ABS and (k >= SECCOMP_DATA_SIZE or k & 3):
            raise BpfError(f"{pc}: load offset {k} outside/misaligned in seccomp_data")
        if code == BPF_LD | BPF_MEM and k >= BPF_MEMWORDS:
            raise BpfError(f"{pc}: scratch index {k} out of range")
    elif cls == BPF_LDX:
        ok = code in (BPF_LDX | BPF_W | BPF_LEN, BPF_LDX | BPF_IMM, BPF_LDX | BPF_MEM)
        if code == BPF_LDX | BPF_MEM and k >= BPF_MEMWORDS:
            raise BpfError(f"{pc}: scratch index {k} out of range")
    elif cls in (BPF_ST, BPF_STX):
        ok = code in (BPF_ST, BPF_STX)
        if ok and k >= BPF_MEMWORDS:
            raise BpfError(f"{pc}: scratch index {k} out of range")
    elif cls == BPF_ALU:
        op, src = code & 0xF0, code & 0x08
        ok = (op in _ALU_NAMES and code & 0x07 == BPF_ALU) or code == BPF_ALU | BPF_NEG
        if op == BPF_DIV and src == BPF_K and k == 0:
            raise BpfError(f"{pc}: division by constant zero")
        if op in (BPF_LSH, BPF_RSH) and src == BPF_K and k >= 32:
            raise BpfError(f"{pc}: shift by {k} >= 32")
    elif cls == BPF_JMP:
        op = code & 0xF0
        ok = code == BPF_JMP | BPF_JA or (op in _JMP_NAMES and code & ~0xF8 == BPF_JMP)
    elif cls == BPF_RET:
        ok = code in (BPF_RET | BPF_K, BPF_RET | BPF_A)
    elif cls == BPF_MISC:
        ok = code in (BPF_MISC | BPF_TAX, BPF_MISC | BPF_TXA)
    if not ok:
        raise BpfError(f"{pc}: opcode 0x{code:04x} not allowed in a seccomp filter")


def evaluate(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64,
             args: tuple[int, ...] = (0,) * 6, ip: int = 0) -> int:
    """Run `program` on the given syscall and return the 32-bit SECCOMP_RET_* value."""
    insns = decode(program)
    if not insns:
        raise BpfError("empty program")
    data = seccomp_data(nr, arch, args, ip)
    A = X = 0
    mem: list[int | None] = [None] * BPF_MEMWORDS
    pc = 0
    n = len(insns)
    steps = 0
    while True:
        if pc >= n:
            raise BpfError(f"fell off the end of the program (pc={pc}, {n} instructions)")
        steps += 1
        if steps > n:          # classic BPF only jumps forward; cannot happen unless broken
            raise BpfError("too many steps")
        code, jt, jf, k = insns[pc]
        _check_opcode(pc, code, k)
        cls = code & 7
        if cls == BPF_LD:
            mode = code & 0xE0
            if mode == BPF_ABS:
                A = int.from_bytes(data[k:k + 4], "little")
            elif mode == BPF_LEN:
                A = SECCOMP_DATA_SIZE
            elif mode == BPF_IMM:
                A = k
            else:  # BPF_MEM
                if mem[k] is None:
                    raise BpfError(f"{pc}: read of unwritten scratch M[{k}]")
                A = mem[k]
        elif cls == BPF_LDX:
            mode = code & 0xE0
            if mode == BPF_LEN:
                X = SECCOMP_DATA_SIZE
            elif mode == BPF_IMM:
                X = k
            else:
                if mem[k] is None:
                    raise BpfError(f"{pc}: read of unwritten scratch M[{k}]")
                X = mem[k]
        elif cls == BPF_ST:
            mem[k] = A
        elif cls == BPF_STX:
            mem[k] = X
        elif cls == BPF_ALU:
            op = code & 0xF0
            if op == BPF_NEG:
                A = (-A) & _M32
            else:
                src = X if code & BPF_X else k
                if op == BPF_ADD:
                    A = (A + src) & _M32
                elif op == BPF_SUB:
                    A = (A - src) & _M32
                elif op == BPF_MUL:
                    A = (A * src) & _M32
                elif op == BPF_DIV:
                    if src == 0:       # kernel: division by X == 0 makes the filter return 0
                        return 0
                    A = A // src
                elif op == BPF_OR:
                    A = A | src
                elif op == BPF_AND:
                    A = A & src
                elif op == BPF_XOR:
                    A = A ^ src
                elif op == BPF_LSH:
                    A = (A << (src & 31)) & _M32
                elif op == BPF_RSH:
                    A = A >> (src & 31)
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                target = pc + 1 + k
            else:
                src = X if code & BPF_X else k
                if op == BPF_JEQ:
                    cond = A == src
                elif op == BPF_JGT:
                    cond = A > src
                elif op == BPF_JGE:
                    cond = A >= src
                else:  # BPF_JSET
                    cond = (A & src) != 0
                target = pc + 1 + (jt if cond else jf)
            if target >= n:
                raise BpfError(f"{pc}: jump to {target} outside program of {n}")
            pc = target
            continue
        elif cls == BPF_RET:
            return (A if code & BPF_A else k) & _M32
        elif cls == BPF_MISC:
            if code & 0xF8 == BPF_TXA:
                A = X
            else:
                X = A
        pc += 1


def kernel_caches_allow(program: bytes, nr: int, arch: int = AUDIT_ARCH_X86_64) -> bool:
    """Whether the kernel's per-filter action cache (5.11+, `seccomp_is_const_allow` in
    kernel/seccomp.c) marks `nr` as always allowed, so the program never runs for it: the
    same walk with only `nr` and `arch` known, giving up at any other load or instruction.
    Non-intercepted syscalls cost only the seccomp entry itself when this holds."""
    insns = decode(program)
    a = 0
    pc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        if code == BPF_LD | BPF_W | BPF_ABS:
            if k == 0:
                a = nr & _M32
            elif k == 4:
                a = arch
            else:
                return False
        elif code == BPF_RET | BPF_K:
            return k == SECCOMP_RET_ALLOW
        elif code == BPF_JMP | BPF_JA:
            pc += k
        elif code in (BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JGE | BPF_K,
                      BPF_JMP | BPF_JGT | BPF_K, BPF_JMP | BPF_JSET | BPF_K):
            op = code & 0xF0
            taken = (a == k if op == BPF_JEQ else a >= k if op == BPF_JGE else
                     a > k if op == BPF_JGT else (a & k) != 0)
            pc += jt if taken else jf
        elif code == BPF_ALU | BPF_AND | BPF_K:
            a &= k
        else:
            return False
        pc += 1
    return False


def action_of(ret: int) -> str:
    """Name the action of a SECCOMP_RET_* value as the kernel would act on it."""
    ret &= _M32
    action = ret & SECCOMP_RET_ACTION_FULL
    if action == SECCOMP_RET_ALLOW:
        return "allow"
    if action == SECCOMP_RET_USER_NOTIF:
        return "notify"
    if action == SECCOMP_RET_ERRNO:
        # the kernel clamps the errno to MAX_ERRNO
        return f"errno:{min(ret & SECCOMP_RET_DATA, 4095)}"
    if action == SECCOMP_RET_KILL_THREAD:
        return "kill_thread"
    if action == SECCOMP_RET_TRAP:
        return "trap"
    if action == SECCOMP_RET_TRACE:
        return "trace"
    if action == SECCOMP_RET_LOG:
        return "log"
    # SECCOMP_RET_KILL_PROCESS, and any action the kernel does not know (treated the same)
    return "kill_process"


def disassemble(program: bytes) -> list[str]:
    """One human-readable line per instruction."""
    out = []
    for pc, (code, jt, jf, k) in enumerate(decode(program)):
        cls = code & 7
        if cls == BPF_LD:
            mode = code & 0xE0
            if mode == BPF_ABS:
                text = f"ld  [{k}]" + _field_name(k)
            elif mode == BPF_IMM:
                text = f"ld  #0x{k:x}"
            elif mode == BPF_MEM:
                text = f"ld  M[{k}]"
            elif mode == BPF_LEN:
                text = "ld  #len"
            else:
                text = "ld  ???"
        elif cls == BPF_LDX:
            mode = code & 0xE0
            text = {BPF_IMM: f"ldx #0x{k:x}", BPF_MEM: f"ldx M[{k}]",
                    BPF_LEN: "ldx #len"}.get(mode, "ldx ???")
        elif cls == BPF_ST:
            text = f"st  M[{k}]"
        elif cls == BPF_STX:
            text = f"stx M[{k}]"
        elif cls == BPF_ALU:
            op = code & 0xF0
            if op == BPF_NEG:
                text = "neg"
            else:
                text = f"{_ALU_NAMES.get(op, '???'):3} " + ("x" if code & BPF_X else f"#0x{k:x}")
        elif cls == BPF_JMP:
            op = code & 0xF0
            if op == BPF_JA:
                text = f"ja  {pc + 1 + k}"
            else:
                src = "x" if code & BPF_X else f"#0x{k:x}"
                text = f"{_JMP_NAMES.get(op, '???'):4} {src:<12} jt {pc + 1 + jt:<4} jf {pc + 1 + jf}"
        elif cls == BPF_RET:
            text = "ret a" if code & BPF_A else f"ret #0x{k:08x}  ({action_of(k)})"
        else:
            text = "txa" if code & 0xF8 == BPF_TXA else "tax"
        out.append(f"{pc:4}: {code:04x} {jt:3} {jf:3} {k:08x}   {text}")
    return out


def _field_name(k: int) -> str:
    if k == 0:
        return "  (nr)"
    if k == 4:
        return "  (arch)"
    if k in (8, 12):
        return "  (ip " + ("lo)" if k == 8 else "hi)")
    if 16 <= k < 64:
        i, half = divmod(k - 16, 8)
        return f"  (args[{i}] {'lo' if half == 0 else 'hi'})"
    return ""
