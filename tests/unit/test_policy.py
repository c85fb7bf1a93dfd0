"""Profile loading, compilation and decisions, on real Action objects (no kernel needed)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from aarm_sandbox.actions.action import Action
from aarm_sandbox.context.session import SessionContext
from aarm_sandbox.policy.compiler import CompiledPolicy, Placeholders, glob_to_regex
from aarm_sandbox.policy.decision import Result
from aarm_sandbox.policy.engine import PolicyEngine
from aarm_sandbox.policy.loader import ProfileError, builtin_names, load_profile

WS, TMP, HOME = "/work/ws", "/tmp/aarm-s1", "/home/u"


def engine(name: str = "default", observe: bool = False) -> tuple[PolicyEngine, SessionContext]:
    pol = CompiledPolicy(load_profile(name).profile, Placeholders(WS, TMP, HOME))
    return PolicyEngine(pol, observe=observe), SessionContext("s1")


def act(type_: str, *paths: str, target: str | None = None) -> Action:
    return Action(type_, target or (paths[0] if paths else ""), "test", 1, 1, 0, tuple(paths))


def test_builtin_profiles_all_load():
    assert {"default", "ci-untrusted", "observe"} <= set(builtin_names())
    for n in builtin_names():
        assert load_profile(n).sha256


@pytest.mark.parametrize("glob,path,ok", [
    ("/a/**", "/a", True), ("/a/**", "/a/b/c", True), ("/a/**", "/ab", False),
    ("/a/*", "/a/b", True), ("/a/*", "/a/b/c", False), ("/a/?", "/a/b", True),
    ("**/*.sample", "/w/.git/hooks/pre-commit.sample", True), ("/a.b", "/aXb", False),
    ("pipe:*", "pipe:[123]", True),
])
def test_glob_semantics(glob, path, ok):
    import re
    assert bool(re.match(glob_to_regex(glob) + r"\Z", path)) is ok


def test_writes_inside_workspace_and_tmp_are_allowed():
    e, c = engine()
    for p in (f"{WS}/a.txt", f"{WS}/d/e/f", f"{TMP}/x"):
        assert e.decide(act("file.create", p), c).result is Result.ALLOW


def test_writes_outside_are_denied_with_eacces():
    e, c = engine()
    d = e.decide(act("file.write", "/etc/passwd"), c)
    assert d.result is Result.DENY and d.errno == errno.EACCES and d.rule == "outside-workspace"


def test_rename_out_of_workspace_is_judged_on_both_paths():
    e, c = engine()
    d = e.decide(act("file.rename", f"{WS}/a", "/etc/cron.d/x"), c)
    assert d.result is Result.DENY


def test_hardlink_of_outside_file_into_workspace_is_denied():
    e, c = engine()
    assert e.decide(act("file.link", "/etc/shadow", f"{WS}/alias"), c).result is Result.DENY


def test_credential_store_is_denied_even_for_exec():
    e, c = engine()
    d = e.decide(act("process.exec", f"{HOME}/.ssh/evil"), c)
    assert d.result is Result.DENY and d.rule == "credential-store"


def test_git_hook_write_steps_up_and_without_approver_is_denied():
    e, c = engine()
    d = e.decide(act("file.create", f"{WS}/.git/hooks/pre-commit"), c)
    assert d.result is Result.DENY and d.shadow is Result.STEP_UP
    assert "no approver available" in d.reason


def test_git_hook_samples_are_not_held():
    e, c = engine()
    assert e.decide(act("file.create", f"{WS}/.git/hooks/pre-commit.sample"), c).result is Result.ALLOW


def test_git_config_created_this_session_is_not_held(tmp_path):
    ws = str(tmp_path)
    pol = CompiledPolicy(load_profile("default").profile, Placeholders(ws, TMP, HOME))
    e, c = PolicyEngine(pol), SessionContext("s")
    cfg = tmp_path / ".git" / "config"
    cfg.parent.mkdir()
    cfg.write_text("[core]\n")
    # existed before the session: held
    assert e.decide(act("file.write", str(cfg)), c).result is Result.DENY
    # created by this session (git init): not held
    c.record_created(str(cfg))
    assert e.decide(act("file.write", str(cfg)), c).result is Result.ALLOW


def _delete_executed(e, c, path):
    """Decide a delete and, if allowed, count it as the supervisor does once it happened."""
    a = act("file.delete", path)
    d = e.decide(a, c)
    if d.allowed:
        for rid in a.counted or ():
            c.rule_counts[rid] += 1
    return d.result


def test_mass_deletion_is_held_after_100():
    e, c = engine()
    results = [_delete_executed(e, c, f"{WS}/f{i}") for i in range(103)]
    assert results[:100] == [Result.ALLOW] * 100
    assert results[100:] == [Result.DENY] * 3


def test_denied_or_failed_deletions_do_not_count():
    e, c = engine()
    for i in range(500):          # decided but never executed (e.g. ENOENT): not counted
        e.decide(act("file.delete", f"{WS}/missing{i}"), c)
    assert _delete_executed(e, c, f"{WS}/real") is Result.ALLOW


def test_deletions_in_session_tmp_are_not_counted():
    e, c = engine()
    assert all(_delete_executed(e, c, f"{TMP}/f{i}") is Result.ALLOW for i in range(300))


def test_ci_untrusted_denies_reads_outside_and_network():
    e, c = engine("ci-untrusted")
    assert e.decide(act("file.read", f"{HOME}/notes.txt"), c).result is Result.DENY
    assert e.decide(act("file.read", "/usr/lib/libc.so"), c).allowed
    assert e.decide(act("file.read", f"{WS}/src.py"), c).allowed
    d = e.decide(act("net.connect", target="127.0.0.1:80"), c)
    assert d.result is Result.DENY and d.errno == errno.EPERM


def test_ci_untrusted_turns_step_up_into_deny():
    e, c = engine("ci-untrusted")
    d = e.decide(act("file.create", f"{WS}/.git/hooks/post-checkout"), c)
    assert d.result is Result.DENY and "step_up" in d.reason and "approver" not in d.reason


def test_observe_mode_allows_but_records_what_would_happen():
    e, c = engine(observe=True)
    d = e.decide(act("file.write", "/etc/passwd"), c)
    assert d.result is Result.ALLOW and d.shadow is Result.DENY


def test_most_restrictive_rule_wins_regardless_of_order(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("id: t\nrules:\n"
                 "  - {id: a, actions: [file.write], decision: allow}\n"
                 "  - {id: d, actions: [file.write], paths: ['/x/**'], decision: deny, errno: EROFS}\n")
    pol = CompiledPolicy(load_profile(str(f)).profile, Placeholders(WS, TMP, HOME))
    d = PolicyEngine(pol).decide(act("file.write", "/x/y"), SessionContext("s"))
    assert d.result is Result.DENY and d.errno == errno.EROFS and d.rule == "d"


def _write(tmp_path, text: str):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    return str(f)


def test_unknown_field_error_names_file_line_field_and_allowed(tmp_path):
    f = _write(tmp_path, "id: x\nrules:\n  - id: a\n    actions: [file.write]\n    decision: deny\n    pathz: [/]\n")
    with pytest.raises(ProfileError) as ei:
        load_profile(f)
    msg = str(ei.value)
    assert f"{f}:6:" in msg and "rules[0].pathz" in msg and "allowed here:" in msg and "paths" in msg


def test_bad_decision_value_is_reported(tmp_path):
    f = _write(tmp_path, "id: x\nrules:\n  - id: a\n    actions: [file.write]\n    decision: maybe\n")
    with pytest.raises(ProfileError, match=r":5: rules\[0\]\.decision"):
        load_profile(f)


def test_unknown_action_type_is_reported(tmp_path):
    f = _write(tmp_path, "id: x\nrules:\n  - id: a\n    actions: [file.destroy]\n    decision: deny\n")
    with pytest.raises(ProfileError, match="matches no action type"):
        load_profile(f)


def test_yaml_syntax_error_is_reported_with_line(tmp_path):
    f = _write(tmp_path, "id: x\nrules: [\n")
    with pytest.raises(ProfileError, match=r"bad.yaml:\d+: not valid YAML"):
        load_profile(f)


def test_cli_exits_125_without_traceback_on_bad_profile(tmp_path):
    f = _write(tmp_path, "id: x\nsettings:\n  netwrk: none\n")
    for argv in (["profiles", "check", f], ["run", "--profile", f, "--", "true"]):
        p = subprocess.run([sys.executable, "-m", "aarm_sandbox", *argv], capture_output=True, text=True)
        assert p.returncode == 125, p.stderr
        assert "Traceback" not in p.stderr
        assert "settings.netwrk: unknown field" in p.stderr and ":3:" in p.stderr


def test_unknown_profile_name_lists_builtins():
    p = subprocess.run([sys.executable, "-m", "aarm_sandbox", "run", "--profile", "nope", "--", "true"],
                       capture_output=True, text=True)
    assert p.returncode == 125 and "built-in profiles: ci-untrusted, default, observe" in p.stderr


def test_profile_schema_is_exported_as_json_schema():
    p = subprocess.run([sys.executable, "-m", "aarm_sandbox", "profiles", "schema"], capture_output=True, text=True)
    import json
    schema = json.loads(p.stdout)
    assert "rules" in schema["properties"]


def test_modify_rule_needs_its_transform_and_quarantine_only_applies_to_deletes(tmp_path):
    f = _write(tmp_path, "id: x\nrules:\n  - id: a\n    actions: [file.delete]\n    decision: modify\n")
    with pytest.raises(ProfileError, match="modify: quarantine"):
        load_profile(f)
    f = _write(tmp_path, "id: x\nrules:\n  - id: a\n    actions: [file.write]\n    decision: modify\n"
                         "    modify: quarantine\n")
    with pytest.raises(ProfileError, match="file.delete only"):
        load_profile(f)
    f = _write(tmp_path, "id: x\nrules:\n  - id: a\n    actions: [file.delete]\n    decision: modify\n"
                         "    modify: quarantine\n")
    assert load_profile(f, use_cache=False).profile.rules[0].modify == "quarantine"


def test_egress_entries_are_checked_at_load_time(tmp_path):
    f = _write(tmp_path, "id: x\nsettings:\n  egress: [\"exa mple.com\"]\n")
    with pytest.raises(ProfileError, match="not a host name"):
        load_profile(f)


def test_explain_prints_each_rule_the_winner_and_the_destination_verdict(tmp_path):
    p = subprocess.run([sys.executable, "-m", "aarm_sandbox", "explain", "--workspace", str(tmp_path),
                        "file.delete", "/etc/passwd", "file.write", ".git/hooks/pre-commit",
                        "net.connect", "169.254.169.254:80"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "MATCH outside-workspace" in out and "=> deny [outside-workspace]" in out
    assert "MATCH git-hook" in out and "=> step_up [git-hook]" in out
    assert "cloud metadata" in out and "=> deny [egress]" in out
    bad = subprocess.run([sys.executable, "-m", "aarm_sandbox", "explain", "file.nuke", "/x"],
                         capture_output=True, text=True)
    assert bad.returncode == 125 and "unknown action type" in bad.stderr


def _explain(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "aarm_sandbox", "explain", *args],
                          capture_output=True, text=True, cwd=cwd)


def test_explain_decides_its_actions_as_one_session(tmp_path):
    """A composition rule at work: the connect allowed before the sensitive read is
    denied after it; a count rule at its threshold; a rule waiting for context."""
    (tmp_path / "secret.txt").write_text("s\n")
    p = _explain("--workspace", str(tmp_path), "--allow-net", "203.0.113.7:443",
                 "--sensitive", "{workspace}/secret.txt", "net.connect", "203.0.113.7:443",
                 "file.read", "secret.txt", "net.connect", "203.0.113.7:443")
    assert p.returncode == 0, p.stderr
    blocks = p.stdout.split("\n\n")[1:]
    assert "=> allow" in blocks[0] and "the session now holds: sensitive" in blocks[1]
    assert "MATCH sensitive-then-egress" in blocks[2] and "=> deny [sensitive-then-egress]" in blocks[2]
    below = _explain("--workspace", str(tmp_path), "--count", "mass-delete=99", "file.delete", "f")
    at = _explain("--workspace", str(tmp_path), "--count", "mass-delete=100", "file.delete", "f")
    assert "=> allow" in below.stdout and "=> step_up [mass-delete]" in at.stdout, at.stdout
    prof = tmp_path / "g.yaml"
    prof.write_text("id: g\nextends: default\nrules:\n  - id: ticket\n    actions: [process.exec]\n"
                    "    paths: [/usr/local/bin/deploy]\n    requires_context: [ticket]\n"
                    "    decision: allow\n")
    waits = _explain("--profile", str(prof), "process.exec", "/usr/local/bin/deploy")
    goes = _explain("--profile", str(prof), "--context", "ticket=OPS-1", "process.exec",
                    "/usr/local/bin/deploy")
    assert "=> defer [ticket]" in waits.stdout and "=> allow [ticket]" in goes.stdout
    bad = _explain("--count", "nope=1", "file.delete", "x")
    assert bad.returncode == 125 and "mass-delete" in bad.stderr and "Traceback" not in bad.stderr


def test_explain_counts_windows_and_programs_as_run_does(tmp_path):
    """Windowed count rules and first-time programs decided as a session would: the third
    delete of a burst of at most 2 is denied, the second run of a program is not its first.
    Odd input is a clear error (exit 125), not an internal one."""
    prof = tmp_path / "b.yaml"
    prof.write_text("id: b\nextends: default\nrules:\n  - id: burst\n    actions: [file.delete]\n"
                    "    paths: [workspace]\n    count_over: 2\n    within_seconds: 60\n"
                    "    decision: deny\n  - id: seen\n    actions: [process.exec]\n"
                    "    first_time: false\n    decision: deny\n")
    p = _explain("--profile", str(prof), "--workspace", str(tmp_path), "file.delete", "a",
                 "file.delete", "b", "file.delete", "c", "process.exec", "/usr/bin/true",
                 "process.exec", "/usr/bin/true")
    verdicts = [line.split()[1] for line in p.stdout.splitlines() if line.strip().startswith("=>")]
    assert verdicts == ["allow", "allow", "deny", "allow", "deny"], p.stdout
    for bad in (["--count", "mass-delete=\u00b2"], ["--context", "a b=c"]):
        r = _explain(*bad, "file.delete", "x")
        assert r.returncode == 125 and "internal error" not in r.stderr, r.stderr


def test_the_rule_index_finds_every_rule_a_full_scan_finds(tmp_path):
    """The engine consults only the rules the path index returns: on a large generated
    profile, every decision must equal the one a scan over all rules gives."""
    import random
    import importlib.util
    from types import SimpleNamespace
    from aarm_sandbox.actions.action import Action
    from aarm_sandbox.cli.run import build_policy
    from aarm_sandbox.context.session import SessionContext
    from aarm_sandbox.policy import engine as engine_mod
    spec = importlib.util.spec_from_file_location(
        "bench_policy", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench_policy.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ws = tmp_path / "ws"
    ws.mkdir()
    prof = tmp_path / "p.yaml"
    bench.make_profile(120, prof)
    policy, _ = build_policy(SimpleNamespace(profile=str(prof), allow_write=[], allow_net=[]),
                             str(ws), str(tmp_path / "t"))
    indexed = engine_mod.PolicyEngine(policy)
    ctx = SessionContext(session_id="t")
    rng = random.Random(5)
    checked = 0
    for i in range(3000):
        t = rng.choice(bench.FILE_TYPES)
        d = rng.choice(["src", "dir", "build", "x", ".git/hooks", ".git"])
        path = rng.choice([f"{ws}/{d}{rng.randrange(120)}/f{i}.secret{rng.randrange(120)}",
                           f"{ws}/{d}/config", f"/etc/x{i}", f"{ws}", f"{os.path.expanduser('~')}/.ssh/id",
                           f"{ws}/{d}{rng.randrange(120)}"])
        a = Action(t, path, "openat", 1, 1, paths=(path,))
        got = indexed.decide(a, ctx)
        full = engine_mod.PolicyEngine(policy)
        full.policy = SimpleNamespace(**{**vars(policy), "index_by_type": {
            k: SimpleNamespace(candidates=lambda paths, rules=v: rules)
            for k, v in policy.rules_by_type.items()}})
        want = full.decide(Action(t, path, "openat", 1, 1, paths=(path,)), ctx)
        assert (got.result, got.rule) == (want.result, want.rule), (t, path)
        checked += got.rule != "default"
    assert checked > 100


def test_the_profile_cache_never_serves_another_places_chain(tmp_path, monkeypatch):
    """The same leaf bytes in two directories, each extending its own ./base.yaml (resolved
    from the cwd): each run gets its own base, and knows its own chain's files (which the
    session may not change)."""
    from aarm_sandbox.policy.loader import load_profile
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    leaf = "id: leaf\nextends: ./base.yaml\nrules: []\n"
    views = {}
    for name, default in (("a", "allow"), ("b", "deny")):
        d = tmp_path / name
        d.mkdir()
        (d / "leaf.yaml").write_text(leaf)
        (d / "base.yaml").write_text(f"id: base-{name}\nextends: default\ndefaults:\n  net.connect: {default}\n")
        monkeypatch.chdir(d)
        for _ in range(2):                                   # the second load is a cache hit
            loaded = load_profile(str(d / "leaf.yaml"))
            views[name] = (loaded.profile.defaults["net.connect"], loaded.files)
            assert loaded.files[:2] == (str(d / "leaf.yaml"), str(d / "base.yaml"))
    assert views["a"][0] == "allow" and views["b"][0] == "deny"


def test_an_extends_cycle_through_files_is_reported_not_followed_forever(tmp_path):
    (tmp_path / "a.yaml").write_text("id: a\nversion: 1\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("id: b\nversion: 1\nextends: a.yaml\n")
    (tmp_path / "self.yaml").write_text("id: s\nversion: 1\nextends: self.yaml\n")
    import os
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ProfileError, match=r"`extends` cycle \(a.yaml -> b.yaml -> a.yaml\)"):
            load_profile("a.yaml", use_cache=False)
        with pytest.raises(ProfileError, match=r"`extends` cycle \(self.yaml -> self.yaml\)"):
            load_profile("self.yaml", use_cache=False)
    finally:
        os.chdir(cwd)


def test_a_mistyped_path_set_name_is_refused_with_file_line_and_the_sets(tmp_path):
    f = tmp_path / "k.yaml"
    f.write_text("id: k\nversion: 1\nextends: default\npath_sets:\n  secrets: ['{workspace}/s*']\n"
                 "rules:\n  - id: keep\n    actions: [file.delete]\n    paths: [secret]\n"
                 "    decision: deny\n    reason: keep them\n")
    with pytest.raises(ProfileError, match=r"k.yaml:9: rules\[keep\]\.paths: 'secret' is neither a "
                                           r"path set .* the path sets are: .*secrets"):
        load_profile(str(f), use_cache=False)
    f.write_text(f.read_text().replace("[secret]", "[secrets]"))
    assert load_profile(str(f), use_cache=False).profile.rules[-1].paths == ["secrets"]
