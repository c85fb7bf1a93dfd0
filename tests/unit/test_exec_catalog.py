"""Exec catalog: argv -> semantic actions (what a person would call the command)."""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from aarm_sandbox.actions.exec_catalog import (SEMANTIC_TYPES, Catalog, CatalogError, SemanticAction)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def kinds(actions: list[SemanticAction]) -> list[tuple[str, str]]:
    return [(a.type, a.target) for a in actions]


def only(actions: list[SemanticAction]) -> SemanticAction:
    assert len(actions) == 1, actions
    return actions[0]


# --------------------------------------------------------------------------- files

def test_rm_recursive_force_deletes_each_operand_resolved_against_cwd(catalog):
    acts = catalog.classify(["rm", "-rf", "/data", "build/../out"], cwd="/work")
    assert kinds(acts) == [("file.delete", "/data"), ("file.delete", "/work/out")]
    assert all(a.param("recursive") is True and a.param("force") is True for a in acts)


def test_rm_long_recursive_flag_and_plain_rm(catalog):
    assert only(catalog.classify(["rm", "--recursive", "x"], cwd="/w")).param("recursive") is True
    plain = only(catalog.classify(["/bin/rm", "f"], cwd="/w"))
    assert (plain.type, plain.target, plain.param("recursive")) == ("file.delete", "/w/f", False)


def test_relative_path_stays_relative_without_cwd(catalog):
    assert only(catalog.classify(["rm", "x"])).target == "x"


def test_rmdir_shred_truncate_dd_mv_chmod(catalog):
    assert kinds(catalog.classify(["rmdir", "d"], cwd="/w")) == [("file.delete", "/w/d")]
    shred = only(catalog.classify(["shred", "-u", "secret"], cwd="/w"))
    assert (shred.type, shred.target, shred.param("shred")) == ("file.delete", "/w/secret", True)
    assert kinds(catalog.classify(["truncate", "-s", "0", "log"], cwd="/w")) == [("file.truncate", "/w/log")]
    assert kinds(catalog.classify(["dd", "if=/dev/zero", "of=/dev/sda", "bs=1M"])) == [("file.write", "/dev/sda")]
    mv = catalog.classify(["mv", "a", "b", "dst"], cwd="/w")
    assert kinds(mv) == [("file.rename", "/w/a"), ("file.rename", "/w/b")]
    assert mv[0].param("dest") == "/w/dst"
    chmod = only(catalog.classify(["chmod", "-R", "777", "/srv"]))
    assert (chmod.type, chmod.target, chmod.param("recursive")) == ("file.chmod", "/srv", True)


# --------------------------------------------------------------------------- git

@pytest.mark.parametrize("argv", [
    ["git", "push", "--force", "origin", "main"],
    ["git", "push", "-f", "origin", "main"],
    ["git", "push", "--force-with-lease", "origin", "main"],
    ["git", "push", "--force-with-lease=main:abc", "origin", "main"],
    ["git", "push", "origin", "+main"],
])
def test_git_forced_push_is_vcs_push_force_with_remote_slash_ref(catalog, argv):
    act = only(catalog.classify(argv))
    assert (act.type, act.target) == ("vcs.push.force", "origin/main")


def test_git_plain_push_and_delete_push(catalog):
    assert kinds(catalog.classify(["git", "push", "origin", "main"])) == [("vcs.push", "origin/main")]
    assert kinds(catalog.classify(["git", "push"])) == [("vcs.push", "<default>")]
    assert only(catalog.classify(["git", "push", "origin", ":old"])).type == "vcs.push.delete"
    assert only(catalog.classify(["git", "push", "--delete", "origin", "old"])).type == "vcs.push.delete"


def test_git_discarding_commands_are_vcs_discard(catalog):
    for argv in (["git", "reset", "--hard"], ["git", "clean", "-fdx"], ["git", "checkout", "--", "."],
                 ["git", "restore", "."]):
        assert kinds(catalog.classify(argv, cwd="/repo")) == [("vcs.discard", "/repo")], argv


def test_git_harmless_variants_are_not_discard(catalog):
    assert catalog.classify(["git", "reset", "--soft", "HEAD~1"]) == []
    assert catalog.classify(["git", "clean", "-n"]) == []
    assert catalog.classify(["git", "restore", "--staged", "."]) == []
    assert catalog.classify(["git", "status"]) == []


def test_git_dash_C_changes_the_directory(catalog):
    assert kinds(catalog.classify(["git", "-C", "sub", "reset", "--hard"], cwd="/w")) == [("vcs.discard", "/w/sub")]


def test_git_branch_delete_and_history_rewrite(catalog):
    act = only(catalog.classify(["git", "branch", "-D", "feature"]))
    assert (act.type, act.target, act.param("force")) == ("vcs.branch.delete", "feature", True)
    assert only(catalog.classify(["git", "filter-branch", "--tree-filter", "x"], cwd="/r")).type == "vcs.rewrite"
    assert only(catalog.classify(["git", "filter-repo", "--path", "x"], cwd="/r")).type == "vcs.rewrite"


# --------------------------------------------------------------------------- http

@pytest.mark.parametrize("argv, method, data", [
    (["curl", "https://x.io/a"], "GET", False),
    (["curl", "-X", "DELETE", "https://x.io/a"], "DELETE", False),
    (["curl", "--request=PATCH", "https://x.io/a"], "PATCH", False),
    (["curl", "-d", "a=1", "https://x.io/a"], "POST", True),
    (["curl", "--data-binary", "@f", "https://x.io/a"], "POST", True),
    (["curl", "-T", "f", "https://x.io/a"], "PUT", False),
    (["curl", "--head", "https://x.io/a"], "HEAD", False),
    (["curl", "-sSL", "-H", "X: y", "-o", "out", "https://x.io/a"], "GET", False),
    (["wget", "--post-data=a=1", "https://x.io/a"], "POST", True),
    (["wget", "-O", "-", "https://x.io/a"], "GET", False),
])
def test_http_clients_give_method_and_url(catalog, argv, method, data):
    act = only(catalog.classify(argv))
    assert (act.type, act.target, act.param("method"), act.param("data")) == ("net.http", "https://x.io/a", method, data)


# --------------------------------------------------------------------------- sql

def test_psql_drop_and_select_are_destructive_ddl_then_query(catalog):
    acts = catalog.classify(["psql", "-c", "DROP TABLE users; SELECT 1"])
    assert kinds(acts) == [("db.ddl", "sql:DROP"), ("db.query", "sql:SELECT")]
    assert acts[0].param("destructive") is True
    assert acts[0].param("statement") == "DROP TABLE users"


def test_delete_or_update_without_where_is_unbounded(catalog):
    unbounded = only(catalog.classify(["mysql", "-e", "DELETE FROM t"]))
    assert (unbounded.type, unbounded.param("unbounded")) == ("db.write", True)
    bounded = only(catalog.classify(["sqlite3", "app.db", "UPDATE t SET a=1 WHERE id=2"], cwd="/w"))
    assert bounded.param("unbounded") is None and bounded.param("database") == "/w/app.db"


def test_sql_kinds_map_to_query_write_ddl(catalog):
    sql = "INSERT INTO t VALUES (1); TRUNCATE t; GRANT ALL ON t TO bob; CREATE TABLE u (a int)"
    acts = catalog.classify(["psql", "-d", "prod", "-c", sql])
    assert [a.type for a in acts] == ["db.write", "db.ddl", "db.ddl", "db.ddl"]
    assert acts[1].param("destructive") is True and acts[0].param("database") == "prod"


def test_long_statement_is_truncated_and_says_so(catalog):
    act = only(catalog.classify(["psql", "-c", "SELECT " + ", ".join(["1"] * 400)]))
    assert len(act.param("statement")) == 500 and act.param("truncated") is True


def test_psql_file_is_named_not_read(catalog):
    assert kinds(catalog.classify(["psql", "-f", "migrate.sql"], cwd="/w")) == [("db.script", "/w/migrate.sql")]


# --------------------------------------------------------------------------- infra, cloud, containers, packages

def test_infra_and_cloud_families(catalog):
    cases = {
        ("kubectl", "delete", "ns", "prod"): ("infra.delete", "ns prod"),
        ("kubectl", "apply", "-f", "dep.yaml"): ("infra.change", "dep.yaml"),
        ("helm", "uninstall", "web"): ("infra.delete", "web"),
        ("terraform", "destroy", "-auto-approve"): ("infra.destroy", "/tf"),
        ("terraform", "apply", "-destroy"): ("infra.destroy", "/tf"),
        ("terraform", "apply"): ("infra.change", "/tf"),
        ("aws", "s3", "rm", "s3://b/k", "--recursive"): ("cloud.delete", "s3://b/k"),
        ("aws", "s3", "rb", "s3://b"): ("cloud.delete", "s3://b"),
        ("gsutil", "-m", "rm", "-r", "gs://b/x"): ("cloud.delete", "gs://b/x"),
        ("gcloud", "compute", "instances", "delete", "vm1"): ("cloud.delete", "vm1"),
        ("docker", "rm", "-f", "c1"): ("container.delete", "c1"),
        ("docker", "rmi", "img"): ("container.delete", "img"),
        ("docker", "system", "prune", "-af"): ("container.delete", "system prune"),
        ("docker", "volume", "rm", "v"): ("container.delete", "v"),
    }
    for argv, expected in cases.items():
        assert kinds(catalog.classify(list(argv), cwd="/tf")) == [expected], argv
    assert only(catalog.classify(["aws", "s3", "rm", "s3://b", "--recursive"])).param("recursive") is True


def test_package_installs(catalog):
    assert kinds(catalog.classify(["pip", "install", "requests==2.0", "flask"])) == [
        ("pkg.install", "requests==2.0"), ("pkg.install", "flask")]
    assert kinds(catalog.classify(["npm", "install", "left-pad"])) == [("pkg.install", "left-pad")]
    assert kinds(catalog.classify(["cargo", "install", "ripgrep"])) == [("pkg.install", "ripgrep")]
    assert kinds(catalog.classify(["pip3", "install", "-r", "req.txt"])) == [("pkg.install", "req.txt")]


def test_version_suffixed_names_and_exe_decide_the_tool(catalog):
    assert only(catalog.classify(["python3.11", "-m", "pip", "install", "x"])).type == "pkg.install"
    assert only(catalog.classify(["whatever", "-rf", "/x"], exe="/usr/bin/rm")).target == "/x"


def test_busybox_applet_named_by_argv0(catalog):
    assert kinds(catalog.classify(["rm", "-rf", "/x"], exe="/bin/busybox")) == [("file.delete", "/x")]
    assert kinds(catalog.classify(["busybox", "rm", "-rf", "/x"])) == [("file.delete", "/x")]


# --------------------------------------------------------------------------- launchers

def test_sh_c_with_cd_and_rm_resolves_after_cd(catalog):
    acts = catalog.classify(["sh", "-c", "cd x && rm -rf /data sub"], cwd="/w")
    assert kinds(acts) == [("file.delete", "/data"), ("file.delete", "/w/x/sub")]
    assert acts[0].via == ("sh -c",)


def test_bash_c_splits_on_all_separators(catalog):
    script = "echo hi; git push -f origin main || rm a | cat\nrm -r b & curl -d x https://h/"
    acts = catalog.classify(["/bin/bash", "-lc", script], cwd="/w")
    assert kinds(acts) == [("vcs.push.force", "origin/main"), ("file.delete", "/w/a"),
                           ("file.delete", "/w/b"), ("net.http", "https://h/")]
    assert all(a.via == ("bash -c",) for a in acts)


def test_shell_quotes_keep_operators_literal(catalog):
    assert kinds(catalog.classify(["sh", "-c", "rm 'a;b' \"c && d\""], cwd="/w")) == [
        ("file.delete", "/w/a;b"), ("file.delete", "/w/c && d")]


def test_env_assignments_are_skipped(catalog):
    act = only(catalog.classify(["env", "-i", "-u", "HOME", "FOO=1", "rm", "-rf", "x"], cwd="/w"))
    assert (act.type, act.target, act.via) == ("file.delete", "/w/x", ("env",))


def test_xargs_marks_unknown_stdin_operands(catalog):
    act = only(catalog.classify(["xargs", "-0", "rm", "-rf"]))
    assert (act.type, act.target, act.param("xargs"), act.via) == ("file.delete", "<stdin>", True, ("xargs",))


def test_xargs_replace_string_becomes_stdin_placeholder(catalog):
    act = only(catalog.classify(["xargs", "-I{}", "curl", "-X", "POST", "{}"]))
    assert (act.type, act.target, act.param("method")) == ("net.http", "<stdin>", "POST")


def test_unexpanded_shell_variable_is_not_resolved_against_cwd(catalog):
    act = only(catalog.classify(["sh", "-c", 'for f in *; do rm "$f"; done'], cwd="/w"))
    assert (act.type, act.target) == ("file.delete", "$f")


def test_via_chain_through_sh_env_xargs(catalog):
    act = only(catalog.classify(["sh", "-c", "find . -print0 | env A=1 xargs -0 rm -rf"]))
    assert act.via == ("sh -c", "env", "xargs") and act.param("recursive") is True


def test_timeout_nice_git_push_force(catalog):
    act = only(catalog.classify(["timeout", "5", "nice", "-n", "5", "git", "push", "--force", "origin", "main"]))
    assert (act.type, act.target, act.via) == ("vcs.push.force", "origin/main", ("timeout", "nice"))


def test_sudo_user_kubectl_delete(catalog):
    act = only(catalog.classify(["sudo", "-u", "x", "kubectl", "delete", "ns", "prod"]))
    assert (act.type, act.target, act.via) == ("infra.delete", "ns prod", ("sudo",))


def test_python_c_rmtree_is_recursive_delete(catalog):
    act = only(catalog.classify(["python3", "-c", "import shutil; shutil.rmtree('/data')"]))
    assert (act.type, act.target, act.param("recursive"), act.via) == ("file.delete", "/data", True, ("python -c",))


def test_python_c_os_system_classifies_the_command_string(catalog):
    act = only(catalog.classify(["python3", "-c", "import os; os.system('rm -rf /data')"]))
    assert (act.type, act.target, act.via) == ("file.delete", "/data", ("python -c", "os.system"))


def test_python_subprocess_argv_list(catalog):
    code = "import subprocess; subprocess.run(['git', 'push', '--force', 'origin', 'main'])"
    assert kinds(catalog.classify(["python", "-c", code])) == [("vcs.push.force", "origin/main")]


def test_python_dynamic_rmtree_is_still_reported(catalog):
    act = only(catalog.classify(["python3", "-c", "import shutil,sys; shutil.rmtree(sys.argv[1])"]))
    assert (act.target, act.param("dynamic")) == ("<dynamic>", True)


def test_node_e_exec_sync_git_push_force(catalog):
    act = only(catalog.classify(["node", "-e", "require('child_process').execSync('git push -f')"]))
    assert act.type == "vcs.push.force" and act.via == ("node -e", "child_process.execSync")


def test_dynamic_loader_run_directly(catalog):
    act = only(catalog.classify(["/lib64/ld-linux-x86-64.so.2", "/bin/rm", "-rf", "/x"]))
    assert (act.type, act.target, act.via) == ("file.delete", "/x", ("ld.so",))


def test_find_delete_and_find_exec_rm(catalog):
    act = only(catalog.classify(["find", "/x", "-name", "*.tmp", "-delete"]))
    assert (act.type, act.target, act.param("recursive")) == ("file.delete", "/x", True)
    act = only(catalog.classify(["find", "/x", "-type", "f", "-exec", "rm", "{}", ";"]))
    assert (act.type, act.target, act.param("find"), act.via) == ("file.delete", "/x", True, ("find -exec",))


def test_shell_redirection_is_a_file_write(catalog):
    act = only(catalog.classify(["sh", "-c", "echo x > /etc/hosts 2>/dev/null"]))
    assert (act.type, act.target) == ("file.write", "/etc/hosts")


def test_command_v_runs_nothing(catalog):
    assert catalog.classify(["command", "-v", "rm"]) == []


# --------------------------------------------------------------------------- robustness and speed

def test_weird_inputs_return_without_raising(catalog):
    assert catalog.classify([]) == []
    assert catalog.classify([""]) == []
    assert catalog.classify(["rm", "-rf", "/tmp/\udcff\udcfe"])[0].target == "/tmp/\udcff\udcfe"
    assert catalog.classify(["sh", "-c", "rm '\udcff"]) is not None
    assert catalog.classify(["sh", "-c", "'unterminated \\"]) == []
    assert catalog.classify(["psql", "-c", "\udcff;;;'"]) is not None
    assert catalog.classify([b"rm", b"/x\xff"])[0].type == "file.delete"   # bytes tolerated


def test_huge_argv_is_bounded_and_fast(catalog):
    argv = ["rm", "-rf"] + [f"/d/{i}" for i in range(10_000)]
    start = time.perf_counter()
    acts = catalog.classify(argv)
    assert time.perf_counter() - start < 0.5
    assert 0 < len(acts) <= 512 and acts[-1].param("truncated_actions") is True
    assert catalog.classify(["ls"] + ["x"] * 10_000) == []


def test_deeply_nested_sh_c_is_cut_off_and_flagged(catalog):
    cmd = "rm -rf /data"
    for _ in range(11):
        cmd = "sh -c " + shlex.quote(cmd)        # 1 MB of quoting at the outermost level
    start = time.perf_counter()
    acts = catalog.classify(["sh", "-c", cmd])
    assert time.perf_counter() - start < 0.5
    assert [a.type for a in acts] == ["exec.opaque"] and acts[0].param("reason") == "depth"


def test_launcher_loop_argv_is_cut_off(catalog):
    acts = catalog.classify(["env"] * 5000 + ["rm", "x"])
    assert [a.type for a in acts] == ["exec.opaque"]


def test_many_shell_commands_are_budgeted(catalog):
    acts = catalog.classify(["sh", "-c", "; ".join(["rm x"] * 5000)], cwd="/w")
    assert 0 < len(acts) <= 512 and acts[-1].type == "exec.opaque"


def test_typical_classify_is_well_under_100_microseconds(catalog):
    argv = ["git", "push", "--force", "origin", "main"]
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        catalog.classify(argv, cwd="/w")
    assert (time.perf_counter() - start) / n < 100e-6


def test_unknown_tool_fast_path(catalog):
    argv = ["gcc", "-O2", "-c", "main.c", "-o", "main.o"]
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        assert catalog.classify(argv, exe="/usr/bin/gcc-12") == []
    assert (time.perf_counter() - start) / n < 10e-6


# --------------------------------------------------------------------------- catalog loading

def test_semantic_types_cover_every_family_and_are_dotted_lowercase():
    expected = {"file.delete", "file.truncate", "file.write", "file.rename", "file.chmod",
                "vcs.push", "vcs.push.force", "vcs.discard", "vcs.branch.delete", "vcs.rewrite",
                "net.http", "db.query", "db.write", "db.ddl", "infra.delete", "infra.change",
                "infra.destroy", "cloud.delete", "container.delete", "pkg.install"}
    assert expected <= SEMANTIC_TYPES
    assert all(t == t.lower() and "." in t and " " not in t for t in SEMANTIC_TYPES)


def test_as_record_is_journal_friendly(catalog):
    rec = only(catalog.classify(["sh", "-c", "rm -rf /x"])).as_record()
    assert rec == {"type": "file.delete", "target": "/x", "params": {"recursive": True, "force": True},
                   "via": ["sh -c"]}


def test_user_file_overrides_and_extends_by_tool_name(tmp_path: Path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        "tools:\n"
        "  rm:\n"
        "    rules: [{type: file.purge, targets: operands, target_kind: path}]\n"
        "  git:\n"
        "    extend: true\n"
        "    rules: [{type: vcs.amend, sub: [commit], when_any: [--amend], targets: cwd}]\n"
        "  deploy:\n"
        "    rules: [{type: app.deploy, sub: [prod], targets: none, default_target: prod}]\n")
    cat = Catalog.load([user])
    assert kinds(cat.classify(["rm", "/x"])) == [("file.purge", "/x")]
    assert kinds(cat.classify(["git", "commit", "--amend"], cwd="/r")) == [("vcs.amend", "/r")]
    assert kinds(cat.classify(["git", "push", "-f", "o", "m"])) == [("vcs.push.force", "o/m")]
    assert kinds(cat.classify(["deploy", "prod"])) == [("app.deploy", "prod")]
    assert "app.deploy" in cat.types


@pytest.mark.parametrize("body, needle", [
    ("tools:\n  rm:\n    rules: [{type: File-Delete}]\n", "tools.rm.rules.0.type"),
    ("tools:\n  rm:\n    rules: [{parser: nope}]\n", "unknown parser"),
    ("tools:\n  rm:\n    rules: [{type: file.delete, bogus: 1}]\n", "bogus"),
    ("tools:\n  zz:\n    extend: true\n    rules: [{type: a.b}]\n", "tools.zz"),
])
def test_bad_user_file_error_names_file_and_entry(tmp_path: Path, body: str, needle: str):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    with pytest.raises(CatalogError) as err:
        Catalog.load([bad])
    assert str(bad) in str(err.value) and needle in str(err.value)


def test_the_policy_knows_every_semantic_type_the_catalog_produces():
    from aarm_sandbox.actions.action import ALL_TYPES, SEMANTIC_ONLY_TYPES
    from aarm_sandbox.actions.exec_catalog import SEMANTIC_TYPES
    assert SEMANTIC_TYPES <= set(ALL_TYPES)
    assert set(SEMANTIC_ONLY_TYPES) == SEMANTIC_TYPES - {t for t in ALL_TYPES if t.startswith("file.")}


# --------------------------------------------------------------------------- review: spellings the tools accept

@pytest.mark.parametrize("argv, want", [
    # git takes any unambiguous prefix of a long option
    (["git", "push", "--force-w", "origin", "main"], ("vcs.push.force", "origin/main")),
    (["git", "push", "--mirro", "origin"], ("vcs.push.force", "origin")),
    (["git", "push", "--del", "origin", "victim"], ("vcs.push.delete", "origin/victim")),
    (["git", "reset", "--ha"], ("vcs.discard", "/r")),
    (["git", "clean", "--fo"], ("vcs.discard", "/r")),
    (["git", "checkout", "--forc", "main"], ("vcs.discard", "/r")),
    # configuration on the command line changes what push and clean do
    (["git", "-c", "remote.origin.push=+refs/heads/main:refs/heads/main", "push", "origin"],
     ("vcs.push.force", "origin")),
    (["git", "-c", "remote.origin.mirror=true", "push", "origin"], ("vcs.push.force", "origin")),
    (["git", "-c", "clean.requireForce=false", "clean"], ("vcs.discard", "/r")),
    # git run as git-SUB, and the push plumbing
    (["git-push", "-f", "origin", "main"], ("vcs.push.force", "origin/main")),
    (["git", "send-pack", "--force", "/r.git", "main"], ("vcs.push.force", "/r.git/main")),
])
def test_git_spellings_that_git_accepts_are_classified_like_the_plain_ones(catalog, argv, want):
    assert want in kinds(catalog.classify(argv, exe="/usr/bin/git", cwd="/r")), argv


def test_git_push_prune_deletes_remote_refs(catalog):
    acts = catalog.classify(["git", "push", "--prune", "origin", "refs/heads/*:refs/heads/*"],
                            exe="/usr/bin/git", cwd="/r")
    assert ("vcs.push.delete", "origin") in kinds(acts)


@pytest.mark.parametrize("argv, want", [
    # PostgreSQL and SQLite do not escape quotes with a backslash (sqlparse does)
    (["psql", "-c", "SELECT 'a\\'; DROP TABLE t; --'"], ("db.ddl", "sql:DROP")),
    (["sqlite3", "app.db", "SELECT 'a\\'; DROP TABLE t; -- '"], ("db.ddl", "sql:DROP")),
    # statements that run under a query keyword
    (["psql", "-c", "EXPLAIN ANALYZE DELETE FROM t"], ("db.write", "sql:DELETE")),
    (["psql", "-c", "EXPLAIN (ANALYZE, BUFFERS) DROP TABLE t"], ("db.ddl", "sql:DROP")),
    (["psql", "-c", "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d"], ("db.write", "sql:WITH")),
    # SQL from files and stdin is a script
    (["psql", "-c", "\\i drop.sql"], ("db.script", "/r/drop.sql")),
    (["sqlite3", "app.db", ".read drop.sql"], ("db.script", "/r/drop.sql")),
    (["sqlite3", "app.db"], ("db.script", "<stdin>")),
    (["psql", "-d", "app"], ("db.script", "<stdin>")),
    (["mysql", "-e", "source drop.sql"], ("db.script", "/r/drop.sql")),
    # psql takes option prefixes; MySQL runs /*! ... */ comments
    (["psql", "--comm", "drop table t"], ("db.ddl", "sql:DROP")),
    (["psql", "--comm=drop table t"], ("db.ddl", "sql:DROP")),
    (["mysql", "-e", "/*!50000 DROP TABLE t */"], ("db.ddl", "sql:DROP")),
])
def test_sql_the_server_would_run_is_classified(catalog, argv, want):
    assert want in kinds(catalog.classify(argv, cwd="/r")), argv


def test_an_explain_without_analyze_stays_a_query(catalog):
    assert kinds(catalog.classify(["psql", "-c", "EXPLAIN DELETE FROM t"])) == [("db.query", "sql:EXPLAIN")]


@pytest.mark.parametrize("argv, want", [
    (["kubectl", "-v", "6", "delete", "ns", "prod"], "infra.delete"),
    (["kubectl", "--request-timeout", "5s", "delete", "ns", "prod"], "infra.delete"),
    (["docker-compose", "-f", "dc.yml", "down", "-v"], "container.delete"),
    (["aws", "--cli-binary-format", "raw-in-base64-out", "s3", "rm", "s3://b/k"], "cloud.delete"),
])
def test_global_options_with_values_do_not_hide_the_subcommand(catalog, argv, want):
    assert [a.type for a in catalog.classify(argv)] == [want], argv


@pytest.mark.parametrize("argv, want", [
    # configuration that changes nothing dangerous, or applies to another subcommand
    (["git", "-c", "push.default=current", "push", "origin", "main"], [("vcs.push", "origin/main")]),
    (["git", "-c", "push.default=current", "checkout", "main"], []),
    (["git", "-c", "clean.requireForce=false", "checkout", "main"], []),
    (["git", "-c", "remote.origin.push=refs/heads/main", "push", "origin"], [("vcs.push", "origin")]),
    # clients that read no SQL
    (["psql", "-l"], []), (["psql", "--version"], []), (["sqlite3", "--version"], []),
])
def test_ordinary_commands_are_not_taken_for_dangerous_ones(catalog, argv, want):
    assert kinds(catalog.classify(argv, exe="/usr/bin/git" if argv[0] == "git" else None,
                                  cwd="/r")) == want


@pytest.mark.parametrize("argv, want", [
    (["git", "--config-env=remote.origin.mirror=M", "push", "origin"], ("vcs.push.force", "origin")),
    (["psql", "-c", "EXPLAIN -- c\nANALYZE DELETE FROM t"], ("db.write", "sql:DELETE")),
    (["psql", "-c", "/* c */ WITH d AS (DELETE FROM t RETURNING *) SELECT 1"], ("db.write", "sql:WITH")),
])
def test_comments_and_config_from_the_environment_hide_nothing(catalog, argv, want):
    assert want in kinds(catalog.classify(argv, exe="/usr/bin/git" if argv[0] == "git" else None,
                                          cwd="/r"))


# --------------------------------------------------------------------------- configuration in git's environment

FORCE_ENV = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.push",
             "GIT_CONFIG_VALUE_0": "+refs/heads/main:refs/heads/main"}


@pytest.mark.parametrize("env, argv, want", [
    # the process environment (the exec's envp)
    (FORCE_ENV, ["git", "push", "origin"], ("vcs.push.force", "origin")),
    ({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.mirror",
      "GIT_CONFIG_VALUE_0": "true"}, ["git", "push", "origin"], ("vcs.push.force", "origin")),
    ({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "clean.requireForce",
      "GIT_CONFIG_VALUE_0": "false"}, ["git", "clean"], ("vcs.discard", "/r")),
    ({"GIT_CONFIG_PARAMETERS": "'remote.origin.mirror'='true'"}, ["git", "push", "origin"],
     ("vcs.push.force", "origin")),
    ({"GIT_CONFIG_PARAMETERS": "'clean.requireforce'='false'"}, ["git", "clean"], ("vcs.discard", "/r")),
    # a config file (its content unknown here), an unparsable count or parameter list
    ({"GIT_CONFIG_GLOBAL": "/tmp/forced.gitconfig"}, ["git", "push", "origin"], ("vcs.push.force", "origin")),
    ({"GIT_CONFIG_SYSTEM": "/tmp/x"}, ["git", "clean"], ("vcs.discard", "/r")),
    ({"GIT_CONFIG_COUNT": "many"}, ["git", "push", "origin"], ("vcs.push.force", "origin")),
    ({"GIT_CONFIG_PARAMETERS": "'unterminated"}, ["git", "push", "origin"], ("vcs.push.force", "origin")),
    # set by a launcher on top of the environment
    ({}, ["env", "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=remote.origin.mirror",
          "GIT_CONFIG_VALUE_0=true", "git", "push", "origin"], ("vcs.push.force", "origin")),
    ({}, ["sh", "-c", "GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.origin.mirror "
                      "GIT_CONFIG_VALUE_0=1 git push origin"], ("vcs.push.force", "origin")),
    ({}, ["sh", "-c", "export GIT_CONFIG_PARAMETERS=\"'remote.origin.mirror'='yes'\"; "
                      "git push origin"], ("vcs.push.force", "origin")),
    ({}, ["sh", "-c", "if true; then GIT_CONFIG_GLOBAL=/tmp/g git push origin; fi"],
     ("vcs.push.force", "origin")),
])
def test_git_configuration_in_the_environment_is_taken_into_account(catalog, env, argv, want):
    got = kinds(catalog.classify(argv, exe=None, cwd="/r", env=lambda: env))
    assert want in got, (env, argv, got)


@pytest.mark.parametrize("env, argv, want", [
    ({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"},
     ["git", "push", "origin", "main"], [("vcs.push", "origin/main")]),
    ({"GIT_CONFIG_GLOBAL": "/dev/null"}, ["git", "push", "origin", "main"], [("vcs.push", "origin/main")]),
    (FORCE_ENV, ["git", "status"], []),
    ({"GIT_CONFIG_PARAMETERS": "'push.default'='current'"}, ["git", "push", "origin", "main"],
     [("vcs.push", "origin/main")]),
])
def test_harmless_git_configuration_in_the_environment_changes_nothing(catalog, env, argv, want):
    assert kinds(catalog.classify(argv, exe=None, cwd="/r", env=lambda: env)) == want


def test_the_environment_is_read_only_for_the_subcommands_it_can_change(catalog):
    reads = []

    def env():
        reads.append(1)
        return FORCE_ENV
    catalog.classify(["git", "status"], exe=None, cwd="/r", env=env)
    catalog.classify(["sh", "-c", "git log; ls"], exe=None, cwd="/r", env=env)
    assert reads == []
    catalog.classify(["git", "push"], exe=None, cwd="/r", env=env)
    assert reads == [1]


def test_an_unreadable_environment_counts_as_unknown_configuration(catalog):
    def env():
        raise OSError("gone")
    assert ("vcs.push.force", "origin") in kinds(
        catalog.classify(["git", "push", "origin"], exe=None, cwd="/r", env=env))


def _mirror(value):
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.origin.mirror",
            "GIT_CONFIG_VALUE_0": value}


def _require_force(value):
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "clean.requireForce",
            "GIT_CONFIG_VALUE_0": value}


@pytest.mark.parametrize("env, argv, want", [
    # booleans as git reads them: any non-zero integer (C syntax, k/m/g) is true
    *[(_mirror(v), ["git", "push", "origin"], ("vcs.push.force", "origin"))
      for v in ("2", "-1", "0x1", "1k", " 1", "TRUE", "On")],
    *[(_require_force(v), ["git", "clean"], ("vcs.discard", "/r"))
      for v in ("", "00", "0x0", " 0", "0k", "No", "junk")],
    ({"GIT_CONFIG_PARAMETERS": "'clean.requireForce'=''"}, ["git", "clean"], ("vcs.discard", "/r")),
    ({"GIT_CONFIG_PARAMETERS": "'remote.origin.mirror'="}, ["git", "push", "origin"],
     ("vcs.push.force", "origin")),                         # a key without value: true
    # a remote name with '=' in it
    ({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "remote.x=y.mirror", "GIT_CONFIG_VALUE_0": "true"},
     ["git", "push", "x=y"], ("vcs.push.force", "x=y")),
    ({"GIT_CONFIG_PARAMETERS": "'remote.x=y.push'='+refs/heads/*:refs/heads/*'"},
     ["git", "push", "x=y"], ("vcs.push.force", "x=y")),
    ({"GIT_CONFIG_PARAMETERS": "'remote.o'\\''x.mirror'='1'"}, ["git", "push", "o'x"],
     ("vcs.push.force", "o'x")),
    # included files: their content is unknown here
    ({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "include.path", "GIT_CONFIG_VALUE_0": "/tmp/evil"},
     ["git", "push", "origin"], ("vcs.push.force", "origin")),
    ({}, ["git", "-c", "includeIf.gitdir:/r/.path=/tmp/evil", "push", "origin"],
     ("vcs.push.force", "origin")),
    # aliases given by -c or the environment are what they run
    ({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "alias.p", "GIT_CONFIG_VALUE_0": "push --force"},
     ["git", "p", "origin", "main"], ("vcs.push.force", "origin/main")),
    ({}, ["git", "-c", "alias.p=!git push -f origin main", "p"], ("vcs.push.force", "origin/main")),
    ({}, ["git", "-c", "alias.wipe=clean -fdx", "-C", "/r", "wipe"], ("vcs.discard", "/r")),
])
def test_git_configuration_spellings_git_accepts_are_seen(catalog, env, argv, want):
    got = kinds(catalog.classify(argv, exe=None, cwd="/r", env=lambda: env))
    assert want in got, (env, argv, got)


@pytest.mark.parametrize("env, argv, want", [
    (_mirror(""), ["git", "push", "origin", "main"], [("vcs.push", "origin/main")]),   # '' is false
    (_mirror("0"), ["git", "push", "origin", "main"], [("vcs.push", "origin/main")]),
    (_require_force("yes"), ["git", "clean"], []),
    ({}, ["git", "-c", "alias.status=push -f", "status"], []),     # git's own command wins
    ({}, ["git", "-c", "alias.st=status", "st"], []),
])
def test_harmless_git_configuration_spellings_change_nothing(catalog, env, argv, want):
    assert kinds(catalog.classify(argv, exe=None, cwd="/r", env=lambda: env)) == want


@pytest.mark.parametrize("env, argv, want", [
    # the older GIT_CONFIG_PARAMETERS form: git trims the key
    ({"GIT_CONFIG_PARAMETERS": "'remote.origin.mirror =true'"}, ["git", "push", "origin"],
     ("vcs.push.force", "origin")),
    ({"GIT_CONFIG_PARAMETERS": "' clean.requireForce=false'"}, ["git", "clean"], ("vcs.discard", "/r")),
    # global options with a separate value before the subcommand
    ({}, ["git", "--shallow-file", "", "push", "-f", "origin"], ("vcs.push.force", "origin")),
    ({}, ["git", "--attr-source", "HEAD", "clean", "-f"], ("vcs.discard", "/r")),
    # what git runs cannot be known here: an alias from --config-env, an autocorrected name
    ({}, ["git", "--config-env=alias.x=FOO", "x"], ("exec.opaque", "git")),
    ({}, ["git", "-c", "help.autocorrect=immediate", "psuh", "-f", "origin"], ("exec.opaque", "git")),
])
def test_git_global_options_and_unknowable_commands_are_not_taken_for_harmless(catalog, env, argv, want):
    got = kinds(catalog.classify(argv, exe=None, cwd="/r", env=lambda: env))
    assert want in got, (env, argv, got)


def test_git_environment_configuration_is_parsed_once_per_walk(catalog):
    reads = []

    def env():
        reads.append(1)
        return {"GIT_CONFIG_PARAMETERS": "'user.name'='x'"}
    script = "; ".join(["git lfs ls-files", "git push origin main"] * 50)
    acts = catalog.classify(["sh", "-c", script], exe=None, cwd="/r", env=env)
    assert ("vcs.push", "origin/main") in kinds(acts) and reads == [1]


def test_a_classifier_failure_midway_leaves_an_opaque_action(catalog, monkeypatch):
    """What was found before an exception is kept, and the rest - which may hold the
    dangerous command - is said to be unknown, not silently dropped."""
    from aarm_sandbox.actions import exec_catalog as ec
    real = ec._parse_git_push

    def fails(*a, **kw):
        raise RuntimeError("boom")
    monkeypatch.setitem(ec.PARSERS, "git_push", fails)
    acts = kinds(catalog.classify(["sh", "-c", "rm -rf /r/build; git push -f origin; rm -rf /r/x"],
                                  cwd="/r"))
    assert ("file.delete", "/r/build") in acts and ("exec.opaque", "sh") in acts
    assert real is ec._parse_git_push
