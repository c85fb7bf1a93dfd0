"""Command-line entry point. Configuration errors exit 125 with a message, never a traceback."""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys

EXIT_SANDBOX_ERROR = 125


class _Parser(argparse.ArgumentParser):
    """Invalid command lines are invalid configuration: exit 125 (the CLI contract),
    never 2, so a wrapper can tell "the sandbox refused" from "the command failed"."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_SANDBOX_ERROR, f"{self.prog}: error: {message}\n")


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line parser. When the first argument names a command, only that
    command's parser is built: building all of them costs every `run` ~6 ms of startup.
    Its usage and messages are the same either way (the command list is spelled out)."""
    p = _Parser(prog="aarm-sandbox", description=(
        "Run an AI agent's tools under a supervisor that decides every file change, exec and "
        "connection before it happens, and journals each decision."))
    p.add_argument("--version", action="version", version="aarm-sandbox 0.1.0")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in _COMMANDS:
        sub = p.add_subparsers(dest="cmd", required=True,
                               metavar="{" + ",".join(_COMMANDS) + "}")
        _COMMANDS[argv[0]](sub)
        return p
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in _COMMANDS.values():
        add(sub)
    return p


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="run COMMAND confined by a profile")
    r.add_argument("--profile", help="built-in profile name or YAML file (default: default)")
    r.add_argument("--workspace", help="directory the agent may change (default: cwd)")
    r.add_argument("--journal", help="journal file (default: $XDG_STATE_HOME/aarm-sandbox/SESSION.jsonl)")
    r.add_argument("--session-id", help="session identifier (default: time + random)")
    r.add_argument("--intent", help="the agent's declared intent (recorded, not trusted)")
    r.add_argument("--agent-id", help="the agent's identity for receipts (default: $AARM_AGENT_ID)")
    r.add_argument("--user", help="the human on whose behalf the agent acts (default: $AARM_USER "
                   "or the login name)")
    r.add_argument("--service", help="the service or pipeline running the agent (default: $AARM_SERVICE)")
    r.add_argument("--witness", metavar="PATH",
                   help="also append every signed checkpoint to PATH (a file, or a directory: "
                   "PATH/SESSION.jsonl), outside the workspace, to detect rollback")
    r.add_argument("--allow-write", action="append", default=[], metavar="PATH",
                   help="also allow changes under PATH (repeatable)")
    r.add_argument("--allow-net", action="append", default=[], metavar="DEST",
                   help="allow egress to DEST: [tcp://|udp://]HOST[:PORT], HOST a name "
                   "(*.example.com), IP or CIDR; the supervisor makes the connection")
    r.add_argument("--sensitive", action="append", default=[], metavar="GLOB",
                   help="label paths matching GLOB as data class 'sensitive'")
    r.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                   help="context a rule may require (e.g. ticket=OPS-12); rules needing a "
                   "missing key DEFER")
    r.add_argument("--context-store", metavar="DIR",
                   help="keep the session context (files that carry sensitive data) across "
                   "sessions of the same workspace in DIR (outside the workspace)")
    r.add_argument("--approval-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="how long a held action (STEP_UP/DEFER) waits for an answer before it "
                   "is denied (default: the profile's settings.approval_timeout, 120)")
    r.add_argument("--approver", choices=["auto", "terminal", "socket", "none"], default=None,
                   help="who answers STEP_UP: terminal (a prompt on run's terminal), socket "
                   "(`aarm-sandbox approvals` or HTTP on the session's control socket), none "
                   "(deny at once); auto (default, or $AARM_APPROVER): terminal if run has one, "
                   "else none")
    r.add_argument("--observe", action="store_true",
                   help="shadow mode: allow everything, journal what the profile would have done")
    r.add_argument("--explain", action="store_true", help="print every decision to stderr")
    r.add_argument("--verbose", "-v", action="store_true")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def _add_profiles(sub) -> None:
    pr = sub.add_parser("profiles", help="list, show or check profiles")
    psub = pr.add_subparsers(dest="pcmd", required=True)
    psub.add_parser("list", help="built-in profiles")
    sh = psub.add_parser("show", help="print a profile (after `extends`)")
    sh.add_argument("name")
    ck = psub.add_parser("check", help="validate a profile file")
    ck.add_argument("file")
    psub.add_parser("schema", help="JSON Schema of the profile format")


def _add_journal(sub) -> None:
    j = sub.add_parser("journal", help="verify and read session journals")
    jsub = j.add_subparsers(dest="jcmd", required=True)
    jv = jsub.add_parser("verify", help="check a journal offline: exit 0 iff intact, sealed "
                         "and signed by a trusted key (1 tampered, 2 unsealed)")
    jv.add_argument("file")
    jv.add_argument("--key", action="append", default=[], metavar="PUBKEY",
                    help="trusted public key (PEM file or base64); repeatable. The local key "
                    "pair and $XDG_CONFIG_HOME/aarm-sandbox/trusted-keys/*.pub are trusted too")
    jv.add_argument("--witness", metavar="PATH", help="witness file or directory to check against")
    jv.add_argument("--json", action="store_true")
    js = jsub.add_parser("show", help="readable timeline of a journal")
    js.add_argument("file")
    js.add_argument("--json", action="store_true")
    js.add_argument("--denied", action="store_true", help="only non-allow decisions")
    jt = jsub.add_parser("tail", help="print records as they are written")
    jt.add_argument("file")
    jt.add_argument("-f", "--follow", action="store_true", help="keep following the file")
    jt.add_argument("--json", action="store_true")
    jt.add_argument("--denied", action="store_true", help="only non-allow decisions")
    je = jsub.add_parser("export", help="events in a standard schema for SIEMs")
    je.add_argument("file")
    je.add_argument("--format", required=True, choices=["ocsf", "otlp-json"])


def _add_explain(sub) -> None:
    ex = sub.add_parser("explain", help="what a profile decides for actions, rule by rule")
    ex.add_argument("--profile", help="built-in profile name or YAML file (default: default)")
    ex.add_argument("--workspace", help="workspace the profile's {workspace} means (default: cwd)")
    ex.add_argument("--allow-net", action="append", default=[], metavar="DEST")
    ex.add_argument("--sensitive", action="append", default=[], metavar="GLOB",
                    help="paths labelled sensitive, as for run")
    ex.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                    help="declared context, as for run (a requires_context rule needs it)")
    ex.add_argument("--count", action="append", default=[], metavar="RULE=N",
                    help="the session already did N actions a count rule counts (mass-delete=100)")
    ex.add_argument("items", nargs="+", metavar="TYPE TARGET",
                    help="pairs, e.g. file.delete .git/config net.connect 169.254.169.254:80; "
                         "decided in order as one session (a read of sensitive data is "
                         "remembered by the ones after it)")


def _add_restore(sub) -> None:
    rs = sub.add_parser("restore", help="put back what a session's quarantine rule kept "
                        "instead of deleting")
    rs.add_argument("session", help="session id (printed by run; in every receipt)")
    rs.add_argument("paths", nargs="*", metavar="PATH", help="only these paths (and below)")
    rs.add_argument("--force", action="store_true", help="overwrite files that exist again")
    rs.add_argument("--list", action="store_true", help="show what is in the trash")


def _add_keygen(sub) -> None:
    kg = sub.add_parser("keygen", help="create the Ed25519 key pair that signs journals")
    kg.add_argument("--force", action="store_true", help="replace an existing key pair")


def _add_keys(sub) -> None:
    k = sub.add_parser("keys", help="journal signing keys")
    ksub = k.add_subparsers(dest="kcmd", required=True)
    ksub.add_parser("export", help="print the public key (PEM) for verifiers")


def _add_doctor(sub) -> None:
    d = sub.add_parser("doctor", help="probe every kernel feature the sandbox uses")
    d.add_argument("--json", action="store_true")


def _add_approvals(sub) -> None:
    ap = sub.add_parser("approvals", help="list, show, approve or deny the actions running "
                        "sessions hold for a human (STEP_UP) or for context (DEFER)")
    asub = ap.add_subparsers(dest="acmd", required=True)
    al = asub.add_parser("list", help="pending requests of every running session")
    al.add_argument("--session", metavar="ID", help="only this session")
    al.add_argument("--json", action="store_true")
    ash = asub.add_parser("show", help="everything an approver should see about a request")
    ash.add_argument("request", metavar="ID")
    ash.add_argument("--json", action="store_true")
    for verb in ("approve", "deny"):
        av = asub.add_parser(verb, help=f"show the request, then {verb} exactly what was shown")
        av.add_argument("request", metavar="ID")
        av.add_argument("--reason", metavar="TEXT", help="recorded with the answer")
        if verb == "approve":
            av.add_argument("--session-scope", action="store_true",
                            help="approve this exact action shape for the rest of the session")
        av.add_argument("--hash", metavar="HEX", help="refuse unless the request still has "
                        "this action hash (bind a script to the view it reviewed)")
        av.add_argument("--as", dest="label", metavar="NAME",
                        help="a name for the approver, recorded next to the uid and pid")
    aw = asub.add_parser("watch", help="print requests and answers as they happen (Ctrl-C ends)")
    aw.add_argument("--session", metavar="ID", help="only this session")
    aw.add_argument("--json", action="store_true", help="one JSON object per line")


def _add_context(sub) -> None:
    cx = sub.add_parser("context", help="give a running session context its DEFERred actions "
                        "wait for")
    csub = cx.add_subparsers(dest="ccmd", required=True)
    ca = csub.add_parser("add", help="set KEY=VALUE in SESSION (releases what waited for it)")
    ca.add_argument("session", help="session id")
    ca.add_argument("pairs", nargs="+", metavar="KEY=VALUE")


# Every command, in the order `--help` lists them.
_COMMANDS = {"run": _add_run, "profiles": _add_profiles, "journal": _add_journal,
             "explain": _add_explain, "restore": _add_restore, "keygen": _add_keygen,
             "keys": _add_keys, "doctor": _add_doctor, "approvals": _add_approvals,
             "context": _add_context}


def _positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= 86400:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 < SECONDS <= 86400")
    return v


def main(argv: list[str] | None = None) -> int:
    args = _parser(argv).parse_args(argv)
    try:
        if args.cmd == "run":
            # What the session's startup allocates lives as long as the session: cyclic
            # collections would only traverse it (~5 ms of startup). run() freezes it and
            # turns the collector back on before the supervisor starts.
            gc.disable()
            from aarm_sandbox.cli.run import UsageError, run
            if args.command and args.command[0] == "--":
                args.command = args.command[1:]
            try:
                code = run(args)
            except UsageError as e:
                print(f"aarm-sandbox: {e}", file=sys.stderr)
                return EXIT_SANDBOX_ERROR
            # Everything is written and closed: skip interpreter teardown (tens of ms of
            # module finalisation that only delays the user's shell).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if args.cmd == "profiles":
            return _profiles(args)
        if args.cmd == "journal":
            return _journal(args)
        if args.cmd in ("keygen", "keys"):
            return _keys(args)
        if args.cmd == "explain":
            from aarm_sandbox.cli.explain import explain
            return explain(args.profile, args.items, args.workspace, args.allow_net,
                           args.sensitive, args.context, args.count)
        if args.cmd == "restore":
            from aarm_sandbox.cli.restore import restore_cmd
            return restore_cmd(args.session, args.paths, force=args.force, list_only=args.list)
        if args.cmd == "doctor":
            from aarm_sandbox.cli.doctor import doctor
            return doctor(as_json=args.json)
        if args.cmd == "approvals":
            from aarm_sandbox.cli.approvals import approvals_cmd
            return approvals_cmd(args)
        if args.cmd == "context":
            from aarm_sandbox.cli.approvals import context_cmd
            return context_cmd(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except _profile_error() as e:
        print(f"aarm-sandbox: {e}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    except ImportError as e:
        if "_native" not in str(e):
            raise
        print("aarm-sandbox: the native module is not built (aarm_sandbox._native); reinstall "
              "with `pip install .` on a machine with gcc, the Python headers and libffi",
              file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    except Exception as e:  # noqa: BLE001 - a user sees the cause, never a traceback
        if os.environ.get("AARM_DEBUG"):
            raise
        print(f"aarm-sandbox: internal error: {e.__class__.__name__}: {e} "
              "(the sandbox, if started, dies with this process; set AARM_DEBUG=1 for a "
              "traceback and report it)", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    return 0


def _journal(args) -> int:
    if args.jcmd == "verify":
        from aarm_sandbox.cli.journal_verify import verify
        return verify(args.file, args.key, args.witness, as_json=args.json)
    from aarm_sandbox.cli import journal_show
    if args.jcmd == "show":
        return journal_show.show(args.file, as_json=args.json, only_denied=args.denied)
    if args.jcmd == "tail":
        return journal_show.tail(args.file, follow=args.follow, as_json=args.json,
                                 only_denied=args.denied)
    if args.jcmd == "export":
        return journal_show.export(args.file, args.format)
    return 2


def _keys(args) -> int:
    from aarm_sandbox.journal import keys
    try:
        if args.cmd == "keygen":
            pair = keys.generate(force=args.force)
            print(f"created {pair.private_path} (private, mode 0600) and {pair.public_path}; "
                  f"key id {pair.key_id}")
            return 0
        if args.kcmd == "export":
            pair, created = keys.ensure()
            if created:
                print(f"aarm-sandbox: created a key pair in {pair.private_path.parent}",
                      file=sys.stderr)
            pub = keys.load_private(pair.private_path).public_key()
            sys.stdout.write(f"# aarm-sandbox journal key {pair.key_id}\n")
            sys.stdout.write(keys.public_pem(pub).decode())
            return 0
    except keys.KeyFileError as e:
        print(f"aarm-sandbox: {e}", file=sys.stderr)
        return EXIT_SANDBOX_ERROR
    return 2


def _profile_error():
    from aarm_sandbox.policy.loader import ProfileError
    return ProfileError


def _profiles(args) -> int:
    from aarm_sandbox.policy.loader import builtin_names, load_profile
    if args.pcmd == "list":
        for name in builtin_names():
            prof = load_profile(name).profile
            print(f"{name:14} {prof.description}")
        return 0
    if args.pcmd == "show":
        import yaml
        loaded = load_profile(args.name)
        print(f"# {loaded.source} sha256:{loaded.sha256}")
        from aarm_sandbox.policy.loader import view_to_dict
        data = view_to_dict(loaded.profile)
        for r in data["rules"]:
            r["except"] = r.pop("except_paths")
            for k in [k for k, v in r.items() if v is None or v == []]:
                del r[k]
        print(yaml.safe_dump(data, sort_keys=False))
        return 0
    if args.pcmd == "check":
        loaded = load_profile(args.file, use_cache=False)
        print(f"{args.file}: ok (profile {loaded.profile.id}, {len(loaded.profile.rules)} rules)")
        return 0
    if args.pcmd == "schema":
        from aarm_sandbox.policy.schema import Profile
        print(json.dumps(Profile.model_json_schema(by_alias=True), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
