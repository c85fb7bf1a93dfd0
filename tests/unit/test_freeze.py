"""TreeFreezer on real process trees: a shell with a background counter child and a
foreground counter loop (each forking `sleep` every 10 ms). Frozen means no counter moves."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aarm_sandbox.enforce.freeze import (METHODS, FreezeUnavailable, TreeFreezer,
                                         freezer_support, tree_pids)

# GATE: wait for that file before starting (so every counter process is forked later)
SCRIPT = r'''
count() { i=0; while :; do i=$((i+1)); echo $i >> "$1"; sleep 0.01; done; }
if [ -n "$GATE" ]; then while [ ! -e "$GATE" ]; do sleep 0.01; done; fi
count "$A" &
count "$B"
'''


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_advancing(paths: list[Path], timeout: float = 3.0) -> None:
    start = [lines(p) for p in paths]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(lines(p) >= s + 3 for p, s in zip(paths, start)):
            return
        time.sleep(0.02)
    pytest.fail(f"counters did not advance: {start} -> {[lines(p) for p in paths]}")


def assert_still(paths: list[Path], span: float = 0.3) -> None:
    time.sleep(0.05)            # a write already past the freeze point may land
    before = [lines(p) for p in paths]
    time.sleep(span)
    assert [lines(p) for p in paths] == before, "a counter advanced while frozen"


def kill_tree(root: subprocess.Popen) -> None:
    for _ in range(3):
        for pid in tree_pids(root.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    root.wait(timeout=5)


def start_tree(tmp_path: Path, gate: Path | None = None) -> tuple[subprocess.Popen, list[Path]]:
    files = [tmp_path / "a", tmp_path / "b"]
    env = dict(os.environ, A=str(files[0]), B=str(files[1]), GATE=str(gate or ""))
    return subprocess.Popen(["sh", "-c", SCRIPT], env=env), files


def make(method: str, root_pid: int) -> TreeFreezer:
    try:
        return TreeFreezer.create(f"test-{os.getpid()}-{method}", root_pid, method)
    except FreezeUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("method", METHODS)
def test_freeze_thaw_nested_and_close(tmp_path: Path, method: str) -> None:
    proc, files = start_tree(tmp_path)
    freezer = None
    try:
        wait_advancing(files)                   # the background child exists: moved at create
        freezer = make(method, proc.pid)
        assert freezer.method == method and not freezer.frozen
        cgroup = freezer.cgroup
        freezer.freeze()
        assert freezer.frozen
        assert_still(files)
        freezer.thaw()
        assert not freezer.frozen
        wait_advancing(files)

        freezer.freeze()
        freezer.freeze()
        freezer.thaw()                          # one of two requests answered: still frozen
        assert freezer.frozen
        assert_still(files)
        freezer.thaw()
        wait_advancing(files)
        freezer.thaw()                          # extra thaws are harmless
        assert not freezer.frozen

        freezer.freeze()                        # close() thaws fully
        freezer.close()
        wait_advancing(files)
        kill_tree(proc)
        freezer.close()
        if cgroup is not None:
            assert not os.path.exists(cgroup), "the empty cgroup was not removed"
    finally:
        if freezer is not None:
            freezer.close()                     # a frozen tree cannot die before it thaws
        if proc.poll() is None:
            kill_tree(proc)
        if freezer is not None:
            freezer.close()


@pytest.mark.parametrize("method", METHODS)
def test_children_forked_after_create_are_frozen(tmp_path: Path, method: str) -> None:
    gate = tmp_path / "go"
    proc, files = start_tree(tmp_path, gate)
    freezer = None
    try:
        time.sleep(0.05)
        freezer = make(method, proc.pid)
        gate.touch()                            # every counter process starts after create
        wait_advancing(files)
        if freezer.cgroup is not None:
            with open(os.path.join(freezer.cgroup, "cgroup.procs")) as f:
                inside = {int(p) for p in f.read().split()}
            assert proc.pid in inside
            assert len(inside) >= 2, "the late children did not inherit the cgroup"
        freezer.freeze()
        assert_still(files)
        freezer.thaw()
        wait_advancing(files)
    finally:
        if freezer is not None:
            freezer.close()
        if proc.poll() is None:
            kill_tree(proc)
        if freezer is not None:
            freezer.close()


def test_create_falls_through_and_explains(tmp_path: Path) -> None:
    proc, _ = start_tree(tmp_path, tmp_path / "never")
    try:
        freezer = TreeFreezer.create(f"test-{os.getpid()}-auto", proc.pid)
        try:
            assert freezer.method in METHODS and freezer.note
            if os.geteuid() == 0 and os.access("/sys/fs/cgroup/freezer", os.W_OK):
                assert freezer.method == "cgroup-v1"
        finally:
            kill_tree(proc)
            freezer.close()
        with pytest.raises(ValueError):
            TreeFreezer.create("x", proc.pid, "no-such-method")
    finally:
        if proc.poll() is None:
            kill_tree(proc)


def test_freezer_support_reports_a_method() -> None:
    method, detail = freezer_support()
    assert method in METHODS and detail


def test_a_signals_freeze_survives_an_outside_sigcont_once_reasserted(tmp_path: Path) -> None:
    """The terminal prompt wakes the readers it stopped with SIGCONT; while another request
    still holds a freeze, reassert() stops the tree again."""
    root, files = start_tree(tmp_path)
    try:
        wait_advancing(files)
        f = make("signals", root.pid)
        f.freeze()
        assert_still(files)
        for pid in tree_pids(root.pid):
            os.kill(pid, signal.SIGCONT)
        wait_advancing(files)                   # the outside SIGCONT did wake it
        f.reassert()
        assert_still(files)
        f.thaw()
        wait_advancing(files)
    finally:
        kill_tree(root)
