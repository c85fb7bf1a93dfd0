"""policy.moved_tree on real directory trees: what a directory rename moves, judged entry by
entry where it lands (the decide function stands in for the supervisor's policy)."""
import os

import pytest

from aarm_sandbox.actions import action as A
from aarm_sandbox.policy.decision import Decision, Result
from aarm_sandbox.policy.moved_tree import RENAME_EXCHANGE, judge_moved_tree

ALLOW = Decision(Result.ALLOW, "default", "default")


def held_on(names: dict[str, Result]):
    """A decision per landing basename; the calls are recorded."""
    calls = []

    def decide(act):
        calls.append(act.paths)
        r = names.get(os.path.basename(act.paths[1]))
        return ALLOW if r is None else Decision(r, f"rule-{r.value}", f"{r.value} here", 13)
    return decide, calls


def rename(tmp_path, src: str, dst: str, flags: int = 0) -> A.Action:
    s, d = str(tmp_path / src), str(tmp_path / dst)
    return A.Action(A.FILE_RENAME, s, "renameat2", 1, 1, flags, (s, d), {"destination": d})


@pytest.fixture
def parent(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    before = len(os.listdir("/proc/self/fd"))
    yield fd
    os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before - 1, "the walk leaked an fd"


def judge(decide, act, fd, limit=None):
    src, dst = os.path.basename(act.paths[0]).encode(), os.path.basename(act.paths[1]).encode()
    kw = {} if limit is None else {"limit": limit}
    return judge_moved_tree(decide, act, fd, src, fd, dst, **kw)


def test_a_file_or_a_symlink_to_a_directory_moves_nothing_else(tmp_path, parent):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d" / "hooks").mkdir(parents=True)
    os.symlink("d", tmp_path / "link")
    decide, calls = held_on({"hooks": Result.STEP_UP})
    assert judge(decide, rename(tmp_path, "f", "g"), parent) is None
    assert judge(decide, rename(tmp_path, "link", "g"), parent) is None
    assert calls == []


def test_every_entry_is_judged_where_it_lands_and_the_strictest_wins(tmp_path, parent):
    (tmp_path / "evil" / "hooks").mkdir(parents=True)
    (tmp_path / "evil" / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    (tmp_path / "evil" / "a" / "b").mkdir(parents=True)
    (tmp_path / "evil" / "a" / "b" / "secret").write_text("")
    decide, calls = held_on({"pre-commit": Result.STEP_UP})
    d = judge(decide, rename(tmp_path, "evil", "repo-git"), parent)
    assert d.result is Result.STEP_UP and d.rule == "rule-step_up" and d.errno == 13
    assert d.reason == (f"step_up here (the rename moves {tmp_path}/evil/hooks/pre-commit "
                        f"to {tmp_path}/repo-git/hooks/pre-commit)")
    assert {(os.path.relpath(a, tmp_path), os.path.relpath(b, tmp_path)) for a, b in calls} == {
        ("evil/hooks", "repo-git/hooks"), ("evil/hooks/pre-commit", "repo-git/hooks/pre-commit"),
        ("evil/a", "repo-git/a"), ("evil/a/b", "repo-git/a/b"), ("evil/a/b/secret", "repo-git/a/b/secret")}

    decide, _ = held_on({"pre-commit": Result.STEP_UP, "secret": Result.DENY})
    assert judge(decide, rename(tmp_path, "evil", "repo-git"), parent).result is Result.DENY


def test_rename_exchange_judges_both_trees(tmp_path, parent):
    (tmp_path / "plain").mkdir()
    (tmp_path / "other" / "hooks").mkdir(parents=True)
    decide, calls = held_on({"hooks": Result.STEP_UP})
    assert judge(decide, rename(tmp_path, "plain", "other"), parent) is None      # plain is empty
    d = judge(decide, rename(tmp_path, "plain", "other", RENAME_EXCHANGE), parent)
    assert d.result is Result.STEP_UP and f"moves {tmp_path}/other/hooks to {tmp_path}/plain/hooks" in d.reason


def test_a_tree_over_the_limit_is_refused_without_judging_the_rest(tmp_path, parent):
    for i in range(12):
        (tmp_path / "big" / f"d{i}").mkdir(parents=True)
    decide, calls = held_on({})
    d = judge(decide, rename(tmp_path, "big", "big2"), parent, limit=10)
    assert d.result is Result.DENY and d.rule == "moved-tree" and "more than" in d.reason
    assert len(calls) == 10
    assert judge(decide, rename(tmp_path, "big", "big2"), parent, limit=12) is None
