"""`aarm-sandbox run`: wire the pipeline together for one session."""
from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import stat
import sys
import threading
import time
from types import SimpleNamespace
from pathlib import Path

from aarm_sandbox.context.session import SessionContext
from aarm_sandbox.intercept.filter import FilterError, compile_filter
from aarm_sandbox.journal import keys
from aarm_sandbox.journal.writer import Journal, NullJournal, Signer, open_witness, rfc3339
from aarm_sandbox.launch.sandbox import (CLONE_NEWNET, CLONE_NEWNS, NS_NAMES, LaunchError,
                                         LaunchPlan, disabled_namespaces,
                                         drop_effective_capabilities, launch)
from aarm_sandbox.policy.compiler import CompiledPolicy, Placeholders, glob_to_regex
from aarm_sandbox.policy.engine import PolicyEngine
from aarm_sandbox.policy.loader import builtin_dir, load_profile
from aarm_sandbox.procfs import mount_points
from aarm_sandbox.xdg import cache_dir, control_dir, state_dir

EXIT_SANDBOX_ERROR = 125


class UsageError(Exception):
    """Invalid configuration: exit 125 with the message."""


def new_session_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(4).hex()    # (uuid: +3.7 ms)


def exit_code(wait_status: int) -> int:
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return EXIT_SANDBOX_ERROR


def _is_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _take_back_terminal(was_foreground: bool) -> None:
    """The sandbox's command had the terminal's foreground; give it back to our group."""
    if not was_foreground:
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)


def identity_of(args, session_id: str, profile_id: str, workspace: str) -> dict:
    """Who acts: the human, the agent, the service, the session and the scope in force.
    What cannot be established is listed in `unestablished` (the receipts flag it)."""
    import pwd
    env = os.environ
    user = getattr(args, "user", None) or env.get("AARM_USER")
    if not user:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = None
    ident = {"user": user, "agent": getattr(args, "agent_id", None) or env.get("AARM_AGENT_ID"),
             "service": getattr(args, "service", None) or env.get("AARM_SERVICE"),
             "uid": os.getuid(), "session": session_id,
             "scope": f"profile:{profile_id}@{workspace}"}
    missing = [k for k in ("user", "agent") if not ident[k]]
    if missing:
        ident["unestablished"] = missing
    return ident


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def build_policy(args, workspace: str, tmpdir: str) -> tuple[CompiledPolicy, object]:
    loaded = load_profile(args.profile or "default")
    prof = loaded.profile
    sockets = [os.path.realpath(os.path.expanduser(d[len("unix:"):]))
               for d in args.allow_net if d.startswith("unix:")]
    if sockets:
        # `--allow-net unix:PATH` names a host service's socket (the host-socket rule
        # ignores what is in this set).
        sets = dict(prof.path_sets)
        sets["allowed_sockets"] = list(sets.get("allowed_sockets", [])) + sockets
        prof = SimpleNamespace(**{**vars(prof), "path_sets": sets})
    if args.allow_write:
        sets = dict(prof.path_sets)
        extra = []
        for p in args.allow_write:
            ap = os.path.realpath(os.path.expanduser(p))
            extra += [ap, ap + "/**"]
        sets["writable"] = list(sets.get("writable", [])) + extra
        prof = SimpleNamespace(**{**vars(prof), "path_sets": sets})
    if "git_hooks" in prof.path_sets:
        # hooks directories configured before the session (core.hooksPath: husky's .husky)
        from aarm_sandbox.context.git_hooks import hooks_paths
        hooks_dirs = hooks_paths(workspace, os.path.expanduser("~"))
        if hooks_dirs:
            sets = dict(prof.path_sets)
            sets["git_hooks"] = list(sets["git_hooks"]) + [g for p in hooks_dirs for g in (p, p + "/*")]
            prof = SimpleNamespace(**{**vars(prof), "path_sets": sets})
    ph = Placeholders(workspace=workspace, tmpdir=tmpdir, home=os.path.expanduser("~"))
    return CompiledPolicy(prof, ph), loaded


# Forwarded to the sandbox while it runs. SIGTSTP too: stopping the supervisor itself
# while it installs an fd would lose that answer (see native/aarm_native.c), so a stop
# request stops the sandboxed command instead. SIGTTIN/SIGTTOU stay blocked (a background
# read gets EIO, a write goes through) for the same reason.
FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
                       signal.SIGTSTP})
_NO_STOP = frozenset({signal.SIGTTIN, signal.SIGTTOU})


def _broad_workspace(workspace: str) -> str | None:
    """'/' or the home directory (the default workspace is the cwd: `run` started from ~)."""
    if workspace == "/":
        return "/"
    home = os.path.realpath(os.path.expanduser("~"))
    return f"your home directory {home}" if workspace == home and home != "/" else None


def run(args) -> int:
    """Returns the process exit status (the command's, or 125 when the sandbox can't start)."""
    if not args.command:
        raise UsageError("no command given: aarm-sandbox run [OPTIONS] -- COMMAND [ARG...]")
    workspace = os.path.realpath(args.workspace or os.getcwd())
    if not os.path.isdir(workspace):
        raise UsageError(f"--workspace {workspace}: not a directory")
    broad = _broad_workspace(workspace)
    if broad:
        print(f"aarm-sandbox: warning: the workspace is {broad}: everything in it is writable "
              f"by the sandbox, also what runs later outside it (shell startup files, "
              f"~/.local, ~/.config); give the project directory with --workspace",
              file=sys.stderr)
    session_id = args.session_id or new_session_id()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", session_id):
        raise UsageError("--session-id may only contain letters, digits, '.', '_' and '-'")

    session_tmp = Path(os.environ.get("AARM_TMP_ROOT", "/tmp")) / f"aarm-{session_id}"
    try:
        session_tmp.mkdir(mode=0o700, parents=True, exist_ok=False)
    except FileExistsError:
        raise UsageError(f"session {session_id} already has a temp dir {session_tmp}: "
                         "choose another --session-id") from None
    except OSError as e:
        raise UsageError(f"cannot create the session temp dir {session_tmp}: {e.strerror} "
                         "(set AARM_TMP_ROOT to a writable directory)") from None
    tmpdir = str(session_tmp.resolve())
    keep_tmp: list[str] = []
    # Every thread the session starts inherits a mask that blocks every signal, so that
    # signals reach the main thread only (it unblocks them once the sandbox runs). A
    # supervisor thread interrupted while the kernel installs an fd with ADDFD|SEND loses
    # that answer: the target's call would return 0 (see native/aarm_native.c).
    main_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        return _run_session(args, workspace, session_id, tmpdir, keep_tmp, main_mask)
    except UsageError:
        # a setup error after the journal was made: its still empty files would block the
        # same --journal next time (nothing of a session is in them)
        for made in getattr(args, "made_files", ()):
            _remove_if_empty(made)
        raise
    finally:
        # Signals meant for the sandbox stay blocked until the process exits: one that
        # comes after the seal must not turn the command's exit status into a kill.
        signal.pthread_sigmask(signal.SIG_SETMASK, main_mask | FORWARDED)
        if keep_tmp:
            # Removing it would delete what the agent moved there: never let session
            # cleanup become a deletion the agent can aim.
            print(f"aarm-sandbox: kept {tmpdir}: the session moved {len(keep_tmp)} path(s) into it "
                  f"from outside (first: {keep_tmp[0]})", file=sys.stderr)
        else:
            shutil.rmtree(session_tmp, ignore_errors=True)


def _run_session(args, workspace: str, session_id: str, tmpdir: str, keep_tmp: list[str],
                 main_mask: set) -> int:
    policy, loaded = build_policy(args, workspace, tmpdir)
    settings = policy.profile.settings
    engine = PolicyEngine(policy, observe=args.observe)
    ctx = SessionContext(session_id=session_id, intent=args.intent)
    if policy.class_matchers:
        ctx.class_labels = policy.classes_of
    ctx.facts.update(parse_context(getattr(args, "context", []) or []))
    # (expanded once, for the taint check and for the fast path, which must leave them to
    # Python: they were passed to it unexpanded, "{workspace}/x" as "<cwd>/{workspace}/x")
    sensitive_globs = label_sensitive(ctx, policy, args.sensitive or ())

    journal_path = args.journal or str(state_dir() / f"{session_id}.jsonl")
    # (its directory resolved: the supervisor's own files are protected by the paths the
    # sandbox's actions resolve to, and a symlinked directory let `rm logs/j.jsonl` through)
    journal_path = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(journal_path))),
                                os.path.basename(journal_path))
    try:
        key_pair, created = keys.ensure()
    except (keys.KeyFileError, OSError) as e:
        raise UsageError(f"cannot set up the journal signing key: {e}") from None
    if created:
        print(f"aarm-sandbox: created the journal signing key {key_pair.private_path} "
              f"({key_pair.key_id}); verifiers need {key_pair.public_path}", file=sys.stderr)
    witness_fd = -1
    witness = getattr(args, "witness", None)
    if witness:
        witness = os.path.realpath(witness)
        if _inside(witness, workspace) or _inside(witness, tmpdir):
            raise UsageError(f"--witness {witness} is inside the workspace or the session's "
                             "TMPDIR, where the agent could rewrite it: choose a path outside")
        try:
            witness_fd = open_witness(witness, session_id)
        except OSError as e:
            raise UsageError(f"cannot open the witness {witness}: {e.strerror}") from None
    identity = identity_of(args, session_id, policy.profile.id, workspace)
    policy_block = {"id": policy.profile.id, "version": str(policy.profile.version),
                    "sha256": loaded.sha256}
    journal_cls = NullJournal if os.environ.get("AARM_JOURNAL") == "off" else Journal
    try:
        journal = journal_cls(journal_path, session_id, intent=args.intent, identity=identity,
                              policy=policy_block, witness_fd=witness_fd,
                              checkpoint_every=_env_int("AARM_JOURNAL_CHECKPOINT_EVERY", 1000),
                              checkpoint_ms=_env_int("AARM_JOURNAL_CHECKPOINT_MS", 1000))
    except FileExistsError as e:
        if e.filename and str(e.filename).endswith(".intents"):
            raise UsageError(f"{e.filename} exists: the intent lines of an earlier journal at "
                             f"this path (remove it, or give another --journal)") from None
        raise UsageError(f"the journal {journal_path} already exists (a session id is used once, "
                         "and a journal is never appended to): give another --journal or "
                         "--session-id") from None
    except OSError as e:
        raise UsageError(f"cannot open {e.filename or journal_path}: {e.strerror}") from None
    # (only files this run created: never a FIFO, /dev/stderr or anything else given)
    args.made_files = [p for p in (journal_path if journal.created else None,
                                   journal.intents_path) if p]
    start_record = {"type": "session.start", "command": list(args.command), "intent": args.intent,
                    "workspace": workspace, "tmpdir": tmpdir,
                    "profile": {"id": policy.profile.id, "version": str(policy.profile.version),
                                "source": loaded.source, "sha256": loaded.sha256},
                    "observe": bool(args.observe), "host": os.uname().nodename,
                    "kernel": os.uname().release, "uid": os.getuid(), "identity": identity,
                    "context": dict(ctx.facts)}

    masks = policy.set_paths(settings.mask)
    mask_dirs = [p for p in masks if os.path.isdir(p)]
    mask_files = [p for p in masks if os.path.isfile(p)]
    # The journal, the state directory, the signing keys, the witness and the cache (the
    # next run's compiled filter and validated profile: planted there, they would leave it
    # unconfined) stay out of the sandbox's sight.
    protected = [journal_path, str(keys.config_dir()), str(state_dir()), str(cache_dir())]
    mask_files.append(journal_path)
    if journal.intents_path:
        protected.append(journal.intents_path)
        mask_files.append(journal.intents_path)
        start_record["intents"] = os.path.basename(journal.intents_path)
    # (made now, so that what the supervisor keeps there later, e.g. a quarantine's
    # trash, is already hidden)
    for d, what in ((state_dir(), "state"), (cache_dir(), "cache")):
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the {what} directory {d}: {e.strerror}") from None
    for d in (state_dir(), keys.config_dir(), cache_dir()):
        if os.path.isdir(d) and not _inside(workspace, str(d)):
            mask_dirs.append(str(d))
    if witness:
        protected.append(witness)
        (mask_dirs if os.path.isdir(witness) else mask_files).append(witness)

    store = _context_store(args, workspace, tmpdir)
    if store is not None:
        ctx.tainted_files = store.load()
        ctx.programs_seen = store.programs()
        protected.append(str(store.dir))
        mask_dirs.append(str(store.dir))
    # --sensitive (or files an earlier session tainted): reads must be seen to know when
    # the session holds sensitive data (every read-only open is then decided by the
    # supervisor: slower, but exact).
    notify_reads = settings.intercept_reads or bool(args.sensitive) or bool(ctx.tainted_files)
    try:
        bpf = compile_filter(notify_reads=notify_reads)
    except FilterError as e:
        raise UsageError(str(e)) from None
    env = dict(os.environ)
    env["TMPDIR"] = tmpdir
    env["AARM_SANDBOX_SESSION"] = session_id
    plan = LaunchPlan(argv=list(args.command), env=env, cwd=os.getcwd(), bpf=bpf,
                      mask_dirs=mask_dirs, mask_files=mask_files)
    from aarm_sandbox.launch.views import plan_views
    plan.view_hide, view_warnings = plan_views(masks, [workspace, tmpdir])
    plan.loopback = settings.network == "loopback"
    destinations = _destinations(settings, args)
    if plan.loopback:
        # The sandbox's resolver asks the session's DNS stub (127.0.0.53 in its own
        # network namespace), which answers only names the policy allows.
        plan.dns_stub = True
        resolv = Path(tmpdir) / ".aarm-resolv.conf"
        resolv.write_text("# aarm-sandbox: the session's DNS stub (answers only allowed names)\n"
                          "nameserver 127.0.0.53\noptions timeout:2 attempts:2\n")
        resolv.chmod(0o444)
        plan.bind_files.append((str(resolv), "/etc/resolv.conf"))
    try:
        plan.namespaces &= ~disabled_namespaces(os.environ.get("AARM_DISABLE_NAMESPACES", ""))
        sandbox = launch(plan)
        if (mask_dirs or mask_files) and not sandbox.namespaces & CLONE_NEWNS and not notify_reads:
            # No mount namespace, so no masks: credential stores, and always the journal,
            # the signing keys and the supervisor's state, would be readable. Never
            # fail open: start again with every open notified, so the credential rule
            # decides reads too (slower, but closed). The command has not run yet: its
            # execve waits for a supervisor that was never started.
            sandbox.kill()
            plan.bpf = compile_filter(notify_reads=True)
            plan.namespaces = sandbox.namespaces
            sandbox = launch(plan)
            sandbox.warnings.append("no mount namespace: credential stores cannot be masked, "
                                    "so every open is decided by the supervisor (slower)")
    except (LaunchError, FilterError) as e:
        journal.append({**start_record, "isolation": None})
        journal.append({"type": "session.error", "reason": str(e)})
        journal.signer = _signer(key_pair)
        journal.seal({"type": "session.end", "exit_status": EXIT_SANDBOX_ERROR,
                      "actions": {}, "decisions": {}, "data_classes": []})
        raise UsageError(f"cannot start the sandbox: {e}") from None
    # Single-threaded until here: caps are per thread, and the launcher needed them to map
    # uid 0 into the sandbox's user namespace.
    drop_effective_capabilities()
    _raise_fd_limit()
    # Files the supervisor creates for the sandbox already carry the target's umask.
    os.umask(0)
    _not_dumpable()
    # The private key is read only after this: the sandbox's processes were forked before
    # it was in this process's memory, and its directory is masked in their mount
    # namespace. It is loaded once the command runs (Supervisor.on_running, below), not
    # during the supervisor's own startup, which the command waits for (a key file keygen
    # did not write means importing cryptography: ~15 ms of GIL time); the first
    # signature loads it if that never happened.
    signer = _signer(key_pair)
    # From the first thread on, a short GIL switch interval (as the supervisor keeps it):
    # the journal writer (SCHED_IDLE) and the threads started below must not hold up the
    # rest of the startup, which the command waits for, for 5 ms at a time.
    sys.setswitchinterval(0.0002)
    from aarm_sandbox.intercept.claim import CLAIM
    journal.polite = CLAIM            # the writer yields to decisions (intercept.claim)
    journal.start(signer, preload=False)
    if sandbox.namespaces & CLONE_NEWNS:
        sandbox.warnings.extend(view_warnings)
    for w in sandbox.warnings:
        print(f"aarm-sandbox: warning: {w}", file=sys.stderr)

    from aarm_sandbox.intercept.unotify import UnotifyBackend
    from aarm_sandbox.supervisor import Supervisor

    was_foreground = _is_terminal_foreground()
    done = threading.Event()
    backend = UnotifyBackend(sandbox.listener, sandbox_gone=done.is_set)
    start_record["egress"] = destinations.describe()
    start_record["isolation"] = {
        "backend": backend.name, "sync_wakeup": backend.sync_wakeup,
        "namespaces": [v for k, v in NS_NAMES.items() if sandbox.namespaces & k],
        "masked": mask_dirs + mask_files,
        "views": sorted({d for d, _ in plan.view_hide}) if sandbox.namespaces & CLONE_NEWNS else [],
        "fast_path": os.environ.get("AARM_FAST_PATH", "1") != "0"}
    journal.append(start_record)
    from aarm_sandbox.decode import handlers
    handlers.NETWORK_CONTAINED = bool(sandbox.namespaces & CLONE_NEWNET)
    sup = Supervisor(backend, engine, ctx, journal, explain=args.explain, verbose=args.verbose)
    if signer is not None:
        sup.on_running = signer.preload
    stub = None
    if settings.network == "loopback":
        sup.dstate.destinations = destinations
        stub = _start_dns_stub(sandbox, destinations, ctx, sup)
        sup.meter = _connection_meter(journal, ctx)
        if stub is not None:
            sup.dstate.names_for = stub.names_for
        if not sandbox.namespaces & CLONE_NEWNET:
            sandbox.warnings.append("no network namespace: connections are decided but not "
                                    "contained (the hard network boundary is missing)")
    approvals = _start_approvals(args, sup, engine, settings, session_id, sandbox, workspace, policy)
    sup.overlay_dir = state_dir() / "overlay" / session_id
    if any(r.modify == "quarantine" for rs in policy.rules_by_type.values() for r in rs):
        from aarm_sandbox.enforce.quarantine import Quarantine
        sup.quarantine = Quarantine(session_id, state_dir() / "trash" / session_id)
    # The supervisor refuses every action on its own files: without a mount namespace
    # nothing masks them, and with one a delete or rename it performs in its own namespace
    # would reach the real journal under a mask (a journal inside the workspace: `rm`
    # removed it).
    sup.protected = tuple(protected)
    builtin = str(builtin_dir().resolve())
    sup.governing = frozenset(f for f in loaded.files if not _inside(f, builtin))
    if os.environ.get("AARM_FAST_PATH", "1") != "0":
        from aarm_sandbox.intercept.fastpath import FastPath
        danger = list(sensitive_globs)
        # files an earlier tainted session wrote: opening one (O_RDWR too) taints this one
        danger += [_glob_literal(p) for p in ctx.tainted_files]
        danger += [g for p in protected for g in (p, p.rstrip("/") + "/**")]
        danger += list(sup.governing)
        # labelled paths must be seen by Python (receipts and composition rules need them)
        for globs in (getattr(policy.profile, "data_classes", None) or {}).values():
            danger += policy.expand_patterns(list(globs))

        def make_fast_path(root_fd: int) -> FastPath:
            # Deletes of the sandbox's mount points (masks, views, binds) go to Python, which
            # answers EBUSY as the kernel does inside the sandbox (C's unlinkat is the
            # supervisor's: it would remove what the mount hides). A rename of a directory
            # above one moves it: the fast path is off from then on (Supervisor).
            mounts = mount_points(sandbox.pid)
            sup.mount_points = tuple(m for m in mounts if m != "/")
            # (unreadable - never even "/" -: no delete is C's)
            delete_danger = [_glob_literal(m) for m in sup.mount_points] if mounts else ["/**"]
            fast = FastPath(sandbox.listener, root_fd, policy, danger, delete_danger=delete_danger)
            if journal.intent_log is not None:
                fast.set_intent_log(journal.intent_log, journal.intent_prefix)
            elif journal.intent_prefix:
                fast.set_intent(journal.intent_fd, journal.intent_prefix)
            if sandbox.nosym_root >= 0:
                fast.set_nosym_root(sandbox.nosym_root)
            sandbox.close_nosym_root()        # C keeps its own copy
            return fast
        sup.fast_factory = make_fast_path
    else:
        sandbox.close_nosym_root()
    def supervise():
        try:
            sup.run()
        except BaseException as e:  # noqa: BLE001
            # Nobody answers notifications any more: end the sandbox rather than leave its
            # processes blocked (fail closed, and never hang the caller).
            print(f"aarm-sandbox: supervisor failed ({e!r}); stopping the sandbox",
                  file=sys.stderr)
            journal.append({"type": "session.error", "reason": f"supervisor failed: {e!r}"})
            try:
                os.kill(sandbox.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            CLAIM.release()           # no decision loop any more: the journal must not wait
    loop = threading.Thread(target=supervise, name="aarm-supervisor", daemon=True)
    # The long-lived objects are made: keep the collector off them from now on, and on
    # again if main() turned it off for the startup.
    gc.freeze()
    gc.enable()
    loop.start()

    status_box: list[int] = []
    main_thread = threading.main_thread().ident

    def wait_status():
        try:
            status_box.append(sandbox.wait())
        except LaunchError as e:
            print(f"aarm-sandbox: {e}", file=sys.stderr)
        finally:
            done.set()
            signal.pthread_kill(main_thread, signal.SIGCHLD)    # wake the loop below
    waiter = threading.Thread(target=wait_status, name="aarm-wait", daemon=True)
    waiter.start()

    # Signals for the sandbox are taken with sigtimedwait, never by a handler: no handler
    # runs inside another (a storm of signals once ended in RecursionError, killing the
    # supervisor), and one arriving during the teardown cannot stop the journal's seal.
    signal.pthread_sigmask(signal.SIG_SETMASK, main_mask | FORWARDED | _NO_STOP | {signal.SIGCHLD})
    try:
        while not done.is_set():
            info = signal.sigtimedwait(FORWARDED | {signal.SIGCHLD}, 0.5)
            if info is not None and info.si_signo in FORWARDED and not done.is_set():
                try:
                    os.kill(sandbox.pid, info.si_signo)   # not reaped yet: still its pid
                except ProcessLookupError:
                    pass
        waiter.join()
        loop.join(5)
        return _end_session(args, journal, journal_path, sup, ctx, approvals, stub, store, keep_tmp,
                            was_foreground, status_box, backend)
    finally:
        # The sandbox is gone: signals sent for it since are dropped, not raised here.
        while signal.sigtimedwait(FORWARDED | {signal.SIGCHLD}, 0) is not None:
            pass


def _end_session(args, journal, journal_path, sup, ctx, approvals, stub, store, keep_tmp,
                 was_foreground, status_box, backend) -> int:
    approvals.close()
    if stub is not None:
        stub.stop()
    if sup.meter is not None:
        sup.meter.stop()
    if sup.quarantine is not None:
        sup.quarantine.close()
    if store is not None:
        store.save(ctx.files_carrying_taint(), ctx.programs_seen)
    keep_tmp.extend(ctx.moved_into_tmp)
    _take_back_terminal(was_foreground)
    code = exit_code(status_box[0]) if status_box else EXIT_SANDBOX_ERROR
    sealed = journal.seal({"type": "session.end", "exit_status": code,
                           "egress_bytes": dict(ctx.egress_bytes),
                           "actions": dict(ctx.action_counts), "decisions": dict(ctx.decision_counts),
                           "data_classes": sorted(ctx.data_classes)})
    if not sealed and not isinstance(journal, NullJournal):
        print(f"aarm-sandbox: the journal {journal_path} could not be sealed"
              + (f": {journal.failed}" if journal.failed else ""), file=sys.stderr)
    backend.close()
    if sup.denials or args.verbose:
        print(f"aarm-sandbox: {len(sup.denials)} action(s) denied; journal: {journal_path}",
              file=sys.stderr)
    return code


def _raise_fd_limit() -> None:
    """Every held action keeps its pinned fds open until it is answered: thousands may
    wait at once. The sandbox was forked already and keeps the limits it was given."""
    import resource
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


class _Approvals:
    """The session's approval service: broker, control socket, terminal prompt, freezer."""

    def __init__(self):
        self.broker = self.control = self.prompt = self.freezer = None
        self.old_ttou = None

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        if self.prompt is not None:
            self.prompt.stop()
        if self.control is not None:
            self.control.stop()
        if self.freezer is not None:
            self.freezer.close()
        if self.old_ttou is not None:
            signal.signal(signal.SIGTTOU, self.old_ttou)


def approver_mode(args) -> str:
    """terminal: ask on the terminal (and accept answers on the control socket); socket:
    answers only through the control socket (`aarm-sandbox approvals`, HTTP); none: STEP_UP
    denies at once. auto: terminal when run has one, else none."""
    mode = getattr(args, "approver", None) or os.environ.get("AARM_APPROVER") or "auto"
    if mode not in ("auto", "terminal", "socket", "none"):
        raise UsageError(f"--approver {mode!r}: expected auto, terminal, socket or none")
    return mode


def _start_approvals(args, sup, engine, settings, session_id, sandbox, workspace, policy):
    from aarm_sandbox.approvals.broker import ApprovalBroker, sandbox_membership
    out = _Approvals()
    mode = approver_mode(args)
    terminal_ok = False
    if mode in ("auto", "terminal"):
        # (the prompt module and what it imports only when stdin is a terminal at all:
        # TerminalApprover.available() is False otherwise)
        if os.isatty(0):
            from aarm_sandbox.approvals.prompt import TerminalApprover
            terminal_ok = TerminalApprover.available()
        if mode == "terminal" and not terminal_ok:
            sandbox.warnings.append("--approver terminal: no terminal to ask on; STEP_UP denies")
        mode = "terminal" if terminal_ok else "none"
    status = {"pid": os.getpid(), "workspace": workspace, "profile": policy.profile.id,
              "started": rfc3339(),
              "command": list(args.command)}
    broker = ApprovalBroker(sup, session_id, settings, timeout=args.approval_timeout,
                            approver=mode, status=status,
                            sandbox_check=sandbox_membership(sandbox.pid))
    out.broker = broker
    from aarm_sandbox.approvals.control import ControlServer
    try:
        out.control = ControlServer(broker, control_dir() / f"{session_id}.sock").start()
    except OSError as e:
        print(f"aarm-sandbox: warning: no control socket ({e}): approvals only on the terminal, "
              "deferred actions are denied", file=sys.stderr)
        if mode == "socket":
            mode = broker.approver = "none"
    if mode == "terminal":
        from aarm_sandbox.approvals.prompt import TerminalApprover
        out.old_ttou = TerminalApprover.prepare_main_thread()
        out.prompt = TerminalApprover(broker).start()
        broker.prompt = out.prompt
    # (the terminal prompt pauses the whole tree while it asks: see TerminalApprover._ask)
    if mode == "terminal" or any(r.hold.freeze for rs in policy.rules_by_type.values()
                                 for r in rs if r.hold):
        from aarm_sandbox.enforce.freeze import TreeFreezer
        out.freezer = broker.freezer = TreeFreezer.create(session_id, sandbox.pid)
    engine.hold_step_up = mode != "none" and not engine.step_up_denies
    engine.hold_defer = out.control is not None or mode == "terminal"
    sup.broker = broker
    return out


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None:
        return default
    if not v.isdigit() or int(v) < 1:
        raise UsageError(f"{name}={v!r}: expected a positive integer")
    return int(v)


def _signer(pair: keys.KeyPair) -> Signer | None:
    if pair.public_raw is not None:
        return Signer.deferred(pair.private_path, pair.public_raw)
    try:
        return Signer(keys.load_private(pair.private_path))
    except keys.KeyFileError as e:
        print(f"aarm-sandbox: warning: journal not signed: {e}", file=sys.stderr)
        return None


def _not_dumpable() -> None:
    """No core dumps and no ptrace/`/proc/PID/mem` access by same-uid processes: the
    signing key will be in this process's memory."""
    import ctypes
    PR_SET_DUMPABLE = 4
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _destinations(settings, args):
    from aarm_sandbox.net.destinations import Destinations, DestSpecError, parse_spec
    specs = list(getattr(settings, "egress", []) or [])
    for spec in args.allow_net:
        if spec.startswith("unix:"):
            continue                       # a socket path: see build_policy
        try:
            parse_spec(spec)
        except DestSpecError as e:
            raise UsageError(str(e)) from None
        specs.append(spec)
    return Destinations(specs)


def _context_store(args, workspace: str, tmpdir: str):
    d = getattr(args, "context_store", None)
    if not d:
        return None
    from aarm_sandbox.context.store import ContextStore
    d = os.path.realpath(d)
    if _inside(d, workspace) or _inside(d, tmpdir):
        raise UsageError(f"--context-store {d} is inside the workspace, where the agent could "
                         "rewrite it: choose a directory outside")
    try:
        return ContextStore(d, workspace)
    except OSError as e:
        raise UsageError(f"--context-store {d}: {e.strerror}") from None


def _connection_meter(journal, ctx):
    from aarm_sandbox.net.accounting import ConnectionMeter

    def on_closed(c, state: str) -> None:
        ctx.egress_bytes["sent"] += c.bytes_sent
        ctx.egress_bytes["received"] += c.bytes_received
        journal.append({"type": "net.close", "target": c.target, "notif": c.notif,
                        "bytes_sent": c.bytes_sent, "bytes_received": c.bytes_received,
                        "measured": c.measured, "state": state})
    return ConnectionMeter(on_closed)


def _remove_if_empty(path: str) -> None:
    """Remove a journal file this run made if nothing of a session is in it (a mapped
    intents file holds zeros, no line). Regular files only, never waiting on one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.read(fd, 1) not in (b"", b"\0"):
            return
    except OSError:
        return
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except OSError:
        pass


def _start_dns_stub(sandbox, destinations, ctx, sup):
    """Serve the stub socket the launcher made inside the sandbox's network namespace.
    Every query becomes a dns.query receipt: tunnelling attempts are visible and denied."""
    import socket
    from aarm_sandbox.net.dns_stub import DnsStub
    if sandbox.dns_stub < 0:
        if sandbox.namespaces & CLONE_NEWNET:
            sandbox.warnings.append("no DNS stub (see the launcher warning): names do not resolve")
        return None
    sock = socket.socket(fileno=sandbox.dns_stub)
    sandbox.dns_stub = -1                     # the socket object owns it now

    def allow_name(name: str) -> bool:
        # after a sensitive read, a query to an allowed domain could carry the data out
        return ctx.tainted is None and destinations.allows_name(name)
    return DnsStub(sock, allow_name, on_query=sup.dns_receipt).start()


def _glob_literal(path: str) -> str:
    """A path as a glob that matches only itself."""
    return re.sub(r"([*?\[\]])", r"[\1]", path)


def label_sensitive(ctx, policy, globs) -> list[str]:
    """--sensitive GLOB...: expanded as the profile expands its paths ({workspace}, ~,
    relative to the cwd), set on the session context; returns the expanded globs."""
    ph = policy.placeholders
    expanded = [ph.expand(os.path.abspath(os.path.expanduser(g)) if not g.startswith("{") else g)
                for g in globs]
    if expanded:
        from aarm_sandbox.policy.compiler import literal_prefix
        ctx.sensitive = re.compile("(?:" + "|".join(glob_to_regex(g) for g in expanded) + r")\Z",
                                   re.S)
        ctx.sensitive_prefixes = tuple(literal_prefix(g) for g in expanded)
    return expanded


def parse_context(items) -> dict[str, str]:
    """--context KEY=VALUE...: UsageError for anything else."""
    facts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key):
            raise UsageError(f"--context {item!r}: expected KEY=VALUE (KEY: letters, digits, _ . -)")
        facts[key] = value
    return facts
