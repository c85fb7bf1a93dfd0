"""Credentials the host writes while a session runs stay out of the sandbox's sight.

Masks cover what exists at launch. A credential store the host creates during the session
(`docker login`, `git credential approve`) or replaces by rename (npm, editors) was
readable: the directory holding a masked name is now a view of what it held at launch.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

READER = r"""
import os, sys, time
ws, home = sys.argv[1], sys.argv[2]
open(os.path.join(ws, "ready"), "w").close()
deadline = time.time() + 60
while not os.path.exists(os.path.join(ws, "go")) and time.time() < deadline:
    time.sleep(0.02)
for name in (".git-credentials", ".npmrc", ".docker/config.json", ".ssh/id_ed25519", ".gitconfig"):
    try:
        with open(os.path.join(home, name)) as f:
            print(name, "READ", f.read().strip())
    except OSError as e:
        print(name, "refused", e.strerror)
"""


def _host_writes_during(box, home: Path, run) -> object:
    """Run `run()` (a sandboxed or native READER) while the host, once it is ready, writes
    new credential files and replaces one by rename; returns run()'s result."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(run()))
    t.start()
    deadline = time.time() + 60
    while not (box.workspace / "ready").exists() and time.time() < deadline:
        time.sleep(0.02)
    (home / ".git-credentials").write_text("https://u:NEWSECRET@example.com\n")
    tmp = home / ".npmrc.tmp"
    tmp.write_text("//registry/:_authToken=NEWTOKEN\n")
    os.rename(tmp, home / ".npmrc")
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text('{"auths": "DOCKERSECRET"}\n')
    if box.uid is not None:
        for p in (home / ".git-credentials", home / ".npmrc", home / ".docker",
                  home / ".docker" / "config.json"):
            os.chown(p, box.uid, box.uid)
    (box.workspace / "go").write_text("")
    t.join(90)
    for p in ("ready", "go"):
        (box.workspace / p).unlink(missing_ok=True)
    for p in (home / ".git-credentials", home / ".docker" / "config.json"):
        p.unlink()
    (home / ".docker").rmdir()
    (home / ".npmrc").write_text("//registry/:_authToken=OLDTOKEN\n")
    return out[0]


def test_credentials_the_host_creates_or_replaces_during_a_session_stay_unreadable(any_user_box):
    box = any_user_box
    home = box.root / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".npmrc").write_text("//registry/:_authToken=OLDTOKEN\n")
    (home / ".gitconfig").write_text("[user]\n\tname = dev\n")
    if box.uid is not None:
        for dirpath, dirnames, filenames in os.walk(home):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
                os.lchown(n, box.uid, box.uid)
    env = {"HOME": str(home)}
    py = sys.executable if box.uid is None else "/usr/bin/python3"   # one the user can run
    argv = [py, "-c", READER, str(box.workspace), str(home)]

    native = _host_writes_during(box, home, lambda: box.native(argv, env=env))
    for secret in ("NEWSECRET", "NEWTOKEN", "DOCKERSECRET", "PRIVATE KEY"):
        assert secret in native.stdout, native.stdout + native.stderr     # the attack, natively

    r = _host_writes_during(box, home, lambda: box.run(argv, env=env))
    assert r.returncode == 0, r.stderr[-2000:]
    for secret in ("NEWSECRET", "NEWTOKEN", "OLDTOKEN", "DOCKERSECRET", "PRIVATE KEY"):
        assert secret not in r.stdout, r.stdout
    assert ".gitconfig READ [user]" in r.stdout, r.stdout                # the rest of ~ is there
    assert str(home) in r.records[0]["isolation"]["views"]


def test_a_home_full_of_long_symlinks_still_starts(box):
    """A view's tmpfs had a 64 KiB limit: twenty symlinks with long targets (Nix-style
    paths) in ~ made every session fail to start (ENOSPC)."""
    home = box.root / "longlinks"
    home.mkdir()
    (home / ".netrc").write_text("machine x password p\n")
    for i in range(40):
        (home / f"link{i}").symlink_to("/nix/store/" + "x" * 180 + f"-{i}")
    r = box.run(["sh", "-c", "ls -A ~; cat ~/.netrc"], env={"HOME": str(home)})
    names = set(r.stdout.split())
    assert {f"link{i}" for i in range(40)} <= names, r.stdout + r.stderr[-1000:]
    assert ".netrc" not in names and "password" not in r.stdout


MASKED_ENV = """id: masked-env
extends: default
settings:
  mask: [credentials, dotenv]
path_sets:
  dotenv: ["{workspace}/.env", "{workspace}/secrets", "{workspace}/deep/.env"]
"""


def test_a_masked_file_or_directory_cannot_be_removed_or_renamed_from_inside(box, tmp_path):
    """A path the profile masks is a mount point in the sandbox: the kernel answers EBUSY to
    removing or renaming it there. The supervisor performs deletes itself (in C for the
    workspace) from outside the sandbox's mount namespace, where the kernel does not
    refuse: it removed the real file behind the mask. Natively the same commands remove
    them."""
    profile = tmp_path / "masked-env.yaml"
    profile.write_text(MASKED_ENV)
    ws = box.workspace
    script = (f"rm -f {ws}/.env; cd {ws} && rm -f .env; rmdir {ws}/secrets/sub; "
              f"rm -rf {ws}/secrets; mv {ws}/.env {ws}/moved; mv {ws}/other {ws}/.env; "
              # the mask moves with a directory above it: deleted at its new path
              f"mv {ws}/deep {ws}/deep2; rm -f {ws}/deep2/.env; echo done")

    def plant():
        (ws / ".env").write_text("API_KEY=SECRET\n")
        (ws / "secrets" / "sub").mkdir(parents=True, exist_ok=True)
        (ws / "secrets" / "key").write_text("k")
        (ws / "other").write_text("o")
        (ws / "deep").mkdir(exist_ok=True)
        (ws / "deep" / ".env").write_text("DEEP=SECRET\n")

    plant()
    native = box.native(["sh", "-c", script])
    assert "done" in native.stdout and not (ws / "secrets").exists()
    assert (ws / ".env").read_text() == "o"                   # natively: removed, replaced
    assert not (ws / "deep2" / ".env").exists()
    for p in (ws / ".env", ws / "moved"):
        p.unlink(missing_ok=True)
    os.rmdir(ws / "deep2")
    plant()
    r = box.run(["sh", "-c", script], profile=str(profile))
    assert "done" in r.stdout, r.stderr
    assert (ws / ".env").read_text() == "API_KEY=SECRET\n"
    assert (ws / "secrets" / "key").read_text() == "k" and (ws / "secrets" / "sub").is_dir()
    assert not (ws / "moved").exists() and (ws / "other").read_text() == "o"
    assert (ws / "deep2" / ".env").read_text() == "DEEP=SECRET\n"
    busy = [rec for rec in r.records if rec["type"] == "receipt"
            and (rec.get("outcome") or {}).get("errno") == "EBUSY"]
    assert len(busy) >= 4, r.records
    assert "Device or resource busy" in r.stderr
