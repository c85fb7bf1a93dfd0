"""Shared harness: run real programs under the real supervisor (and natively, to show an
attack works without it). No mocks of the kernel boundary anywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TEST_ROOT = Path(os.environ.get("AARM_TEST_ROOT", "/tmp/aarm-tests"))
UNPRIV_UID = int(os.environ.get("AARM_TEST_UID", "65534"))


def sandbox_cmd() -> list[str]:
    explicit = os.environ.get("AARM_SANDBOX_BIN")
    if explicit:
        return [explicit]
    exe = Path(sys.executable).with_name("aarm-sandbox")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "aarm_sandbox"]


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    journal_path: Path
    records: list[dict] = field(default_factory=list)     # the chained records
    intents: list[dict] = field(default_factory=list)     # intent lines (before destructive actions)

    def receipts(self, type: str | None = None, result: str | None = None) -> list[dict]:
        out = []
        for r in self.records:
            if r.get("type") != "receipt":
                continue
            if type and r["action"]["type"] != type:
                continue
            if result and r["decision"]["result"] != result:
                continue
            out.append(r)
        return out

    def denied(self, type: str | None = None) -> list[dict]:
        return self.receipts(type=type, result="deny")


@dataclass
class Box:
    """A per-test directory tree: workspace/ (writable by policy) and outside/ (not)."""
    root: Path
    workspace: Path
    outside: Path
    uid: int | None = None

    def canary(self, name: str, content: str = "canary\n", where: str = "outside") -> Path:
        base = self.outside if where == "outside" else self.workspace
        p = base / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        if self.uid is not None:
            os.chown(p, self.uid, self.uid)
        return p

    def run(self, argv: list[str], *, profile: str = "default", extra: list[str] | None = None,
            env: dict | None = None, timeout: float = 120, input: str | None = None,
            cwd: Path | None = None, wrapper: list[str] | None = None) -> RunResult:
        """wrapper: a command the supervisor itself runs under (e.g. one refusing ptrace)."""
        journal = self.root / "journal" / f"{uuid.uuid4().hex}.jsonl"
        cmd = (wrapper or []) + sandbox_cmd() + [
            "run", "--profile", profile, "--workspace", str(self.workspace),
            "--journal", str(journal)] + (extra or []) + ["--"] + argv
        if self.uid is not None:
            cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"] + cmd
        full_env = dict(os.environ)
        full_env.update(env or {})
        if self.uid is not None:
            full_env["HOME"] = str(self.root / "home")
        p = subprocess.run(cmd, cwd=cwd or self.workspace, env=full_env, capture_output=True,
                           text=True, timeout=timeout, input=input)
        records, intents = [], []
        if journal.exists():
            for line in journal.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    (intents if rec.get("type") == "intent" else records).append(rec)
        sidecar = Path(str(journal) + ".intents")      # intent lines beside the journal
        if sidecar.exists():
            from aarm_sandbox.journal.chain import intent_bytes   # (a mapped file's zero tail)
            intents += [json.loads(line) for line in intent_bytes(sidecar.read_bytes()).splitlines()
                        if line.strip()]
        return RunResult(p.returncode, p.stdout, p.stderr, journal, records, intents)

    def native(self, argv: list[str], *, timeout: float = 120, cwd: Path | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if self.uid is not None:
            cmd = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"] + cmd
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run(cmd, cwd=cwd or self.workspace, capture_output=True, text=True,
                              timeout=timeout, env=full_env)


def _make_box(uid: int | None) -> Box:
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT, 0o755)
    root = TEST_ROOT / uuid.uuid4().hex[:12]
    for d in ("workspace", "outside", "journal", "home"):
        (root / d).mkdir(parents=True)
    os.chmod(root, 0o755)
    if uid is not None:
        for d in (root, root / "workspace", root / "outside", root / "journal", root / "home"):
            os.chown(d, uid, uid)
    return Box(root, (root / "workspace").resolve(), (root / "outside").resolve(), uid)


@pytest.fixture
def box():
    b = _make_box(None)
    yield b
    shutil.rmtree(b.root, ignore_errors=True)


@pytest.fixture(params=["root", "unprivileged"])
def any_user_box(request):
    """The same test as root and as an unprivileged user (setpriv)."""
    if request.param == "unprivileged" and os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    b = _make_box(UNPRIV_UID if request.param == "unprivileged" else None)
    yield b
    shutil.rmtree(b.root, ignore_errors=True)


_BUILD_DIR = TEST_ROOT / "bin"


@pytest.fixture(scope="session")
def compile_c():
    """compile_c(name, source, extra_flags=()) -> path of a binary built with gcc, cached."""
    _BUILD_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(TEST_ROOT, 0o755)
    os.chmod(_BUILD_DIR, 0o755)

    def build(name: str, source: str, flags: tuple[str, ...] = ()) -> str:
        src = _BUILD_DIR / f"{name}.c"
        out = _BUILD_DIR / name
        if not (out.exists() and src.exists() and src.read_text() == source):
            src.write_text(source)
            subprocess.run(["gcc", "-O1", "-pthread", "-o", str(out), str(src), *flags],
                           check=True, capture_output=True, text=True)
            os.chmod(out, 0o755)
        return str(out)
    return build


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll predicate() every 10 ms until it holds (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False
