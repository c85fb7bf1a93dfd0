"""context.git_hooks on real repository layouts: which hooks directories host git uses."""
import os

from aarm_sandbox.context.git_hooks import hooks_paths


def repo(root, config: str, gitfile: bool = False):
    root.mkdir(parents=True, exist_ok=True)
    if gitfile:
        gitdir = root.parent / f"{root.name}.gitdir"
        gitdir.mkdir()
        (root / ".git").write_text(f"gitdir: ../{gitdir.name}\n")
    else:
        gitdir = root / ".git"
        gitdir.mkdir()
    (gitdir / "config").write_text(config)


def test_the_workspace_repo_and_its_subdirectories_repos_are_read(tmp_path):
    ws = tmp_path / "ws"
    repo(ws, "[core]\n\tbare = false\n\thooksPath = .husky\n")
    repo(ws / "sub", '[Core]\n\tHooksPath = "tools/hooks"  \n')
    repo(ws / "linked", "[core]\nhookspath=h1\n[core]\nhookspath = h2\n", gitfile=True)
    repo(ws / "plain", "[core]\n\tbare = false\n[remote \"origin\"]\n\thooksPath = not-core\n")
    found = hooks_paths(str(ws), "/home/u")
    assert found[0] == str(ws / ".husky")          # the workspace's own repository first
    assert sorted(found[1:]) == sorted([str(ws / "sub" / "tools/hooks"), str(ws / "linked" / "h2")])


def test_hooks_directories_outside_the_workspace_are_not_listed(tmp_path):
    ws = tmp_path / "ws"
    repo(ws, "[core]\n\thooksPath = ../shared-hooks\n")
    repo(ws / "a", f"[core]\n\thooksPath = {tmp_path}/elsewhere\n")
    repo(ws / "b", "[core]\n\thooksPath = ~/hooks\n")
    assert hooks_paths(str(ws), str(tmp_path / "home")) == []
    assert hooks_paths(str(ws), str(ws / "b")) == [os.path.join(str(ws / "b"), "hooks")]


def test_no_repository_no_hooks_path(tmp_path):
    (tmp_path / "ws" / "x").mkdir(parents=True)
    assert hooks_paths(str(tmp_path / "ws"), "/home/u") == []
