"""What the kernel loads to run a file, as decode_exec works it out for the exec-stop check:
native ELFs by their PT_INTERP, everything else through binfmt_misc's entries."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aarm_sandbox.decode import handlers
from aarm_sandbox.decode.handlers import NotNative, _binfmt_interpreters, _loaded_by


def _opath(p: Path) -> int:
    return os.open(p, os.O_PATH | os.O_CLOEXEC)


def test_a_native_elf_names_its_dynamic_loader_and_a_foreign_one_is_not_native(tmp_path):
    elf = Path(shutil.which("true"))
    fd = _opath(elf)
    try:
        is_script, interp = _loaded_by(fd)
    finally:
        os.close(fd)
    assert not is_script and interp and interp.endswith(b".so.2")
    foreign = tmp_path / "riscv"
    data = bytearray(elf.read_bytes())
    data[18:20] = (243).to_bytes(2, "little")           # EM_RISCV: run by binfmt_misc, if at all
    foreign.write_bytes(bytes(data))
    fd = _opath(foreign)
    try:
        with pytest.raises(NotNative):
            _loaded_by(fd)
    finally:
        os.close(fd)


def test_binfmt_misc_entries_are_matched_by_magic_mask_and_extension_as_the_kernel_does(
        tmp_path, monkeypatch):
    reg = tmp_path / "binfmt_misc"
    reg.mkdir()
    (reg / "register").write_text("")
    (reg / "status").write_text("enabled\n")
    (reg / "a-disabled").write_text("disabled\ninterpreter /bin/never\nflags: \noffset 0\n"
                                    "magic 52564131\n")
    (reg / "qemu-riscv64").write_text(
        "enabled\ninterpreter /usr/bin/qemu-riscv64\nflags: OCF\noffset 0\n"
        "magic 7f454c460201010000000000000000000200f300\n"
        "mask ffffffffffffff00fffffffffffffffffeffffff\n")
    (reg / "jar").write_text("enabled\ninterpreter /usr/bin/jexec\nflags: \nextension .jar\n")
    monkeypatch.setattr(handlers, "BINFMT_MISC", str(reg))
    monkeypatch.setattr(handlers, "_BINFMT_CACHE", None)
    riscv_head = bytes.fromhex("7f454c460201010000000000000000000200f300") + b"\0" * 40
    assert _binfmt_interpreters(riscv_head, b"prog") == [("/usr/bin/qemu-riscv64", "OCF")]
    x86_head = bytes.fromhex("7f454c460201010000000000000000000200" "3e00") + b"\0" * 40
    assert _binfmt_interpreters(x86_head, b"prog") == []
    # the extension of the name the exec was given, whatever the file holds
    assert _binfmt_interpreters(b"PK\x03\x04", b"app.jar") == [("/usr/bin/jexec", "")]
    assert _binfmt_interpreters(x86_head, b"tool.jar") == [("/usr/bin/jexec", "")]
    assert _binfmt_interpreters(b"RVA1", b"prog") == []           # its entry is disabled
    monkeypatch.setattr(handlers, "BINFMT_MISC", str(tmp_path / "absent"))
    monkeypatch.setattr(handlers, "_BINFMT_CACHE", None)
    assert _binfmt_interpreters(riscv_head, b"prog") == []
