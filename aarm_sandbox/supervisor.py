"""The decision loop: intercept -> decode -> action -> policy + context -> enforce -> journal.

One thread receives and decides; operations that may block (FIFO opens, connect, sends)
are performed on daemon threads that answer the notification themselves, so one slow
peer never stalls other decisions. Every failure on the way denies (fail closed) and is
journaled.
"""
from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import threading
import time
from collections import deque

from aarm_sandbox._native import ffi
from aarm_sandbox.actions import action as A
from aarm_sandbox.context.count_budget import CountLedger, budget_rules
from aarm_sandbox.context.session import CREATE_TYPES, TAINTABLE_TYPES, SessionContext
from aarm_sandbox.intercept.claim import CLAIM
from aarm_sandbox.decode.handlers import DISPATCH, DecodeState, ExecContinue, Notification
from aarm_sandbox.decode.memory import DecodeError, read_env_prefixed
from aarm_sandbox.enforce.effects import (AtCall, Continue, Effect, NameAppeared, OpenFile,
                                          QuarantineDelete)
from aarm_sandbox.enforce.exec_argv import (ERESTARTNOINTR, ExecRestart, RestartUnavailable,
                                            kill_process_of, no_tracee_left, ptrace_works)
from aarm_sandbox.enforce.exec_verify import (ENV_PREFIX, NO_MARK, ExecBasis,
                                              ExecImageVerifier, basis_differs, exec_mark,
                                              image_loaded)
from aarm_sandbox.enforce.tracer_pool import TracerPool
from aarm_sandbox.journal.writer import Journal
from aarm_sandbox.policy.decision import RANK, Decision, Result, stricter
from aarm_sandbox.policy.engine import PolicyEngine
from aarm_sandbox.policy.moved_tree import judge_moved_tree

TYPE_CHECKING = False      # (typing itself costs the startup path ~4 ms)
if TYPE_CHECKING:
    from aarm_sandbox.intercept.backend import InterceptBackend

AUDIT_ARCH_X86_64 = 0xC000003E

MAX_BLOCKING_OPS = 1024
EXE_TTL = 0.1
_DESTRUCTIVE = {A.FILE_DELETE, A.FILE_RENAME, A.FILE_TRUNCATE}
_OPEN_SYSCALLS = {"open", "openat", "creat", "openat2"}
_EGRESS = {A.NET_CONNECT, A.NET_SEND}
_HELD = (Result.STEP_UP, Result.DEFER)
_NO_EXEC_STOP = 1       # _gated_exec: continued untraced (ptrace refused here)
_CLEAN_OUTCOMES = ("ok", "returned", "gone", "not traced")   # gate_exec: nothing left attached
_APPROVED = {Result.ALLOW, Result.MODIFY}


class Supervisor:
    def __init__(self, backend: InterceptBackend, engine: PolicyEngine, ctx: SessionContext,
                 journal: Journal, *, explain: bool = False, verbose: bool = False):
        self.backend = backend
        self.engine = engine
        self.ctx = ctx
        self.journal = journal
        self.explain = explain
        self.verbose = verbose
        self.dstate = DecodeState()
        self.fast = None
        self._fast_stopped = False      # the native fast path turned off for the session
        self.mount_points: tuple[str, ...] = ()  # the sandbox's (set by run with the fast path)
        self._mount_ancestors: set[str] | None = None
        self.fast_factory = None        # callable(root_fd) -> FastPath, set by the launcher
        # Called once the command runs (its first notification answered, the fast path
        # started): work the session needs soon but the command must not wait for, such
        # as loading the signing key (set by `run`).
        self.on_running = None
        self.fast_reason = {t: f"profile {engine.policy.profile.id} default for {t}"
                            for t in (A.FILE_WRITE, A.FILE_CREATE, A.FILE_DELETE, A.FILE_MKDIR,
                                      A.FILE_CHMOD, A.FILE_UTIME)}
        # The count rule (mass deletion) the fast path keeps with a budget: see count_budget.
        self.ledger: CountLedger | None = next(
            (CountLedger(rule, kind, ctx) for kind, rule in budget_rules(engine.policy).items()),
            None)
        # Operations that may block indefinitely (a FIFO with no peer, a connect) each get
        # a daemon thread: a stuck one must never keep the supervisor from exiting, and a
        # fixed pool could be pinned by a few FIFOs. Bounded, over the bound they fail.
        self.blocking_slots = threading.BoundedSemaphore(MAX_BLOCKING_OPS)
        self.verify_exec = engine.policy.has_exec_restrictions
        self.denials: list[tuple[str, str, str]] = []
        self.tmpdir = engine.policy.placeholders.tmpdir
        self.allowed_images: set[tuple[int, int]] = set()   # (dev, ino) of every allowed exec
        self.exec_verifier = ExecImageVerifier(self.allowed_images, self._kill_after_exec)
        self._tracers = TracerPool()
        # tid -> exec-stop checks of a restarted exec (append_args), run by its restart's tracer
        self._restart_checks: dict[int, list] = {}
        # execs held in their exec stop: True once a seize worked, False when a probe found
        # ptrace refused here (execs are watched after they start instead), None: not known
        self._exec_stops: bool | None = None
        self._exec_stops_lock = threading.Lock()
        self._restart_tracing: set[int] = set()     # tids an append_args restart traces
        # The journal, keys and state: denied outright when no mount namespace hides them.
        self.protected: tuple[str, ...] = ()
        # The profile files (extends chain) governing this session, wherever they are: the
        # session must not be able to rewrite what confines the next run.
        self.governing: frozenset[str] = frozenset()
        self._exe_cache: dict[int, tuple[str, float]] = {}
        self.meter = None            # net.accounting.ConnectionMeter, set by `run`
        self.quarantine = None       # enforce.quarantine.Quarantine, set by `run`
        self.overlay_dir = None      # Path for private copies (modify: private_copy), set by `run`
        # What an exec means (vcs.push.force, db.ddl, ...): only when the profile has rules
        # on such types (loading the catalog and SQL parser costs ~0.3 s).
        self.broker = None           # approvals.broker.ApprovalBroker, set by `run`
        self.classifier = None
        if any(engine.policy.rules_by_type.get(t) for t in A.SEMANTIC_ONLY_TYPES):
            from aarm_sandbox.actions.exec_catalog import Catalog
            self.classifier = Catalog.load()
        # rules that judge an exec by its arguments: its argv is checked in its exec stop
        self._argv_rules = any(r.argv is not None
                               for r in engine.policy.rules_by_type.get(A.PROCESS_EXEC, ()))

    # ------------------------------------------------------------------------------------
    def run(self) -> None:
        # The long-lived objects are made; keep the collector off them, and keep the GIL
        # switch interval short so the journal thread never parks a decision for 5 ms.
        gc.freeze()
        sys.setswitchinterval(0.0002)
        recv = self.backend.receive
        handle = self.handle
        # Python alone until the sandbox root is pinned (first notification), then the
        # native fast path receives and hands over what it does not handle itself.
        while self.fast is None:
            n = recv()
            if n is None:
                return self._finish()
            handle(n)
            if self.dstate.session_root >= 0 and self.fast_factory is not None:
                self._start_fast_path()
            if self.on_running is not None:
                on_running, self.on_running = self.on_running, None
                on_running()
        fast = self.fast
        gone = self.backend.sandbox_gone
        ledger = self.ledger
        while True:
            n = fast.next()
            if n.__class__ is int:
                if n in (-errno.ENOENT, -errno.EAGAIN) and not gone():
                    continue
                break
            fast.drain_batches(self._fast_batch)   # keep the journal and context in order
            if n.nr == 95:                        # umask(): the fast path's cache is stale
                fast.umask_pending(n.tid, n.args[0] & 0o777)
            if ledger is not None:
                ledger.expire(self.ctx)
            handle(n)
        self._finish()

    def _start_fast_path(self) -> None:
        try:
            self.fast = self.fast_factory(self.dstate.session_root)
        except Exception as e:  # noqa: BLE001 - the Python path stays fully functional
            print(f"aarm-sandbox: warning: native fast path unavailable: {e}", file=sys.stderr)
            self.fast_factory = None
            return
        from aarm_sandbox.intercept.fastpath import KIND_TYPE, SYSCALL_NAMES
        self._kind_type = KIND_TYPE
        self.journal.use_native_fast(KIND_TYPE, SYSCALL_NAMES,
                                     {k: self.fast_reason[t] for k, t in KIND_TYPE.items()})
        self.journal.on_failure = self.fast.disable
        if self.journal.failed:
            self.fast.disable()
        if self.ledger is not None and self.ledger.rule is self.fast.budget_rules.get(self.ledger.kind):
            self.ledger.attach(self.fast)
        self._drain_stop = threading.Event()
        from aarm_sandbox.intercept.fastpath import drain_periodically
        self._drainer = threading.Thread(target=drain_periodically, name="aarm-fast-drain",
                                         args=(self.fast, self._fast_batch, self._drain_stop,
                                               self._fast_drain_failed),
                                         daemon=True)
        self._drainer.start()

    def _finish(self) -> None:
        CLAIM.release()                 # the decision loop is over (see intercept.claim)
        if self.fast is not None:
            self._drain_stop.set()
            self.fast.wake_drainer()
            self._drainer.join(5)
            self.fast.drain_batches(self._fast_batch)

    def answer_lost(self, tid: int, killed: bool = False) -> None:
        """An fd answer (ADDFD|SEND) was withdrawn by the kernel after it had marked the
        call answered: the supervisor was stopped or traced mid-answer (signals are
        blocked in its threads), and the target's call returned 0 with no fd installed.
        Its process must not go on with that result: kill it (fail closed), say so."""
        if not killed:
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        why = (f"an fd answer to thread {tid} was lost (the supervisor was stopped or traced "
               f"while installing it); its process was killed. Do not stop (SIGSTOP) or attach "
               f"a debugger/profiler to a running supervisor")
        print(f"aarm-sandbox: error: {why}", file=sys.stderr)
        self.journal.append({"type": "session.error", "reason": why})

    def _fast_batch(self, records, n: int) -> None:
        """Decisions the native fast path made (profile default ALLOW, proven rule-free, or
        below the limit of the count rule it spent a budget unit of: counted here), in ring
        order: the journal gets them first, as one packed run (chained in C:
        journal.native_chain; the ring has let go of them), then the session context
        learns each."""
        self.journal.append_fast_run(self.fast.pack(records, n), n)
        ctx = self.ctx
        ledger = self.ledger
        action_counts, recent = ctx.action_counts, ctx.recent
        unpack, fsdecode = ffi.unpack, os.fsdecode
        kind_type = self._kind_type
        lost = []
        for i in range(n):
            rec = records[i]
            type_ = kind_type[rec.kind]
            path = fsdecode(unpack(rec.path, rec.path_len))
            done = bool(rec.performed)
            if rec.result == -errno.EINPROGRESS:
                lost.append(rec.tid)
            if rec.counted:
                # it counts unless it failed, C's conservative match was not a real one,
                # or the file is the session's own
                ledger.settle(ctx, held=True, counts=done and path not in ctx.created_paths
                              and ledger.matches(path))
            action_counts[type_] += 1
            recent.append((type_, path, "allow", done))
            if done:
                if type_ in TAINTABLE_TYPES:
                    ctx.note_written(path)
                if type_ in CREATE_TYPES:
                    ctx.record_created(path)
                elif type_ == A.FILE_DELETE:
                    ctx.record_removed(path)
            if self.explain:
                try:
                    print(f"aarm-sandbox: allow   {type_} {path} [default] (native fast path)",
                          file=sys.stderr)
                except (OSError, ValueError):
                    pass                            # (a closed stderr: the journal has it)
        ctx.decision_counts["allow"] += n
        for tid in lost:
            self.answer_lost(tid, killed=True)      # C killed it already

    def _fast_drain_failed(self, e: BaseException) -> None:
        """The fast path's drain thread failed: its records may be lost, so no further
        action is allowed (the journal fails, which also turns the fast path off)."""
        self.journal.fail(f"internal error draining the native fast path: {e!r}")

    def _pin_root(self, tid: int) -> None:
        """Pin the sandbox's root once, from the first task that asks for a decision (the
        sandbox init is non-dumpable, its children are not); every task shares it."""
        try:
            self.dstate.session_root = os.open(f"/proc/{tid}/root", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            pass

    def handle(self, n: Notification, _again: int = 0) -> None:
        if self.dstate.session_root < 0:
            self._pin_root(n.tid)
        entry = DISPATCH.get(n.nr)
        if entry is None or n.arch != AUDIT_ARCH_X86_64:
            self.backend.answer_error(n, errno.ENOSYS)
            self.journal.append({"type": "error", "tid": n.tid, "nr": n.nr,
                                 "reason": "unexpected syscall notification", "errno": "ENOSYS"})
            return
        spec, handler = entry
        try:
            decoded = self._decode(n, spec, handler)
        except DecodeError as e:
            # Nothing happened; the target gets the error the kernel itself would give.
            self.backend.answer_error(n, e.errno)
            if self.verbose or e.errno in (errno.EPERM, errno.EACCES):
                # (a refusal is said, with its reason; other errors are the kernel's own)
                print(f"aarm-sandbox: {spec.name} by {n.tid}: {errno.errorcode.get(e.errno)}: {e}",
                      file=sys.stderr)
            if e.errno not in (errno.ENOENT, errno.EEXIST) or n.intent:
                # (the kernel's own answers, nothing happened: every PATH search and
                # `mkdir -p` would flood it - unless an intent line waits for a record)
                self.journal.append(self._with_notif(n, {
                    "type": "error", "syscall": spec.name, "tid": n.tid,
                    "errno": errno.errorcode.get(e.errno, str(e.errno)), "reason": str(e)}))
            return
        except Exception as e:  # noqa: BLE001 - a supervisor bug must deny, never allow
            self._internal_error(n, spec.name, e)
            return
        action, effect = decoded.action, decoded.effect
        try:
            if action is None:
                self._enforce(n, effect, None)
                return
            # The acting program, while the caller is blocked in its syscall (after the
            # answer it may exit or exec at once).
            action.exe = self._exe(n.tid)
            decision = self._decide(action)
            if action.type == A.FILE_RENAME and decision.result is not Result.DENY:
                decision = self._judge_moved_tree(action, decision, effect)
                if decision.result is not Result.DENY:
                    self._mounts_may_move(action)
            elif action.type == A.PROCESS_EXEC and decision.result is not Result.DENY and \
                    action.detail.get("interpreter"):
                decision = self._judge_interpreter(action, decision)
            if self.classifier is not None and action.type == A.PROCESS_EXEC:
                decision = self._decide_semantic(action, decision)
            if not self.backend.still_pending(n):
                effect.close()
                if n.intent:
                    self.journal.append(self._with_notif(n, {
                        "type": "error", "syscall": spec.name, "tid": n.tid, "errno": "ESRCH",
                        "reason": "the caller left its call before the decision: nothing done"}))
                return
            if action.counted and self.ledger is not None and self.ledger.rule.id in action.counted:
                self.ledger.take()              # settled by _track or _receipt
                action.budget_unit = True
            if decision.result in _HELD and self.broker is not None:
                # Nothing waits here: the caller stays blocked in its syscall until the
                # broker answers (approval, context, deadline), from the pinned snapshot.
                self.broker.hold(n, action, decision, effect)
                return
            self._carry_out(n, action, decision, effect)
        except NameAppeared:
            # decided as a create, and the name appeared before the exclusive create:
            # nothing happened, the caller still waits; decide on what is there now
            effect.close()
            if _again < 3:
                return self.handle(n, _again + 1)
            self._internal_error(n, spec.name, RuntimeError("a name kept appearing and vanishing"))
        except Exception as e:  # noqa: BLE001
            effect.close()
            self._internal_error(n, spec.name, e)

    def _decode(self, n: Notification, spec, handler):
        """A name can change between two steps of a resolution (the target racing its own
        files): EAGAIN means "resolve again", a few times, before it becomes the answer."""
        for _ in range(3):
            try:
                return handler(n, spec, self.dstate)
            except DecodeError as e:
                if e.errno != errno.EAGAIN:
                    raise
        return handler(n, spec, self.dstate)

    # ------------------------------------------------------------------------------------
    def _carry_out(self, n: Notification, action, decision: Decision, effect: Effect, *,
                   held=None, approval: dict | None = None, why: str = "") -> None:
        """Enforce a decision and journal it: ALLOW/MODIFY are performed (off the loop when
        they may block), anything else is denied with the rule's errno. `held` is the
        STEP_UP/DEFER decision an answered request was held under: the receipt names it,
        with the answer (`approval`)."""
        if decision.result in _APPROVED and self.journal.failed:
            # (a held action answered after the journal failed: nothing may happen unrecorded)
            decision = Decision(Result.DENY, "journal", self.journal.failed, errno.EIO)
        if decision.result is Result.MODIFY:
            effect, modified = self._modify(action, decision, effect, n)
            if modified is None:
                decision = Decision(Result.DENY, decision.rule, f"{decision.reason} (modify: "
                                    f"{decision.modify} does not apply here)", decision.errno)
            else:
                action.detail["modified"] = modified
        shown = held or decision
        if decision.result in _APPROVED:
            if effect.blocking:
                if not self.blocking_slots.acquire(blocking=False):
                    effect.close()
                    self.backend.answer_error(n, errno.EAGAIN)
                    self._receipt(action, Decision(Result.DENY, "resource-limit",
                                  f"more than {MAX_BLOCKING_OPS} blocking operations pending",
                                  errno.EAGAIN), -errno.EAGAIN, approval=approval)
                    return
                threading.Thread(target=self._enforce_async, args=(n, effect, action, shown, approval),
                                 name="aarm-blocking", daemon=True).start()
                return
            outcome = self._enforce(n, effect, action, verify=held is not None)
            self._receipt(action, shown, outcome, approval=approval,
                          executed=outcome >= 0 or effect.performed)
            return
        effect.close()
        err = decision.errno or shown.errno or errno.EPERM
        # Journaled before the answer releases the caller: whatever it does next (also
        # decided by another thread, when this one answers a held request) comes after.
        self._receipt(action, shown, -err, approval=approval, executed=False)
        self.backend.answer_error(n, err)
        self.report_denial(action.type, action.target, why or decision.reason)

    def release_held(self, p, verdict, approval: dict) -> None:
        """Answer a held request (from whichever thread ended it): perform the action from
        the snapshot that was shown, or deny it with the rule's errno. Journaled with who
        answered, when and how."""
        n, action, effect, held = p.n, p.action, p.effect, p.decision
        final = verdict.decision or held
        if verdict.decision is not None:
            approval["decision"] = {"result": final.result.value, "rule": final.rule,
                                    "reason": final.reason}
        try:
            if verdict.approve and not self.backend.still_pending(n):
                effect.close()
                approval["answer_note"] = "the caller went away before the answer"
                self._receipt(action, held, -errno.ESRCH, approval=approval, executed=False)
                return
            if not verdict.approve:
                final = Decision(Result.DENY, final.rule, final.reason, final.errno or held.errno)
            elif final.result in _HELD:            # a human approved the held action itself
                final = Decision(Result.ALLOW, final.rule, final.reason)
            why = (f"{held.reason} ({p.kind}: {verdict.answer}"
                   + (f": {verdict.reason}" if verdict.reason else "") + ")")
            self._carry_out(n, action, final, effect, held=held, approval=approval, why=why)
        except Exception as e:  # noqa: BLE001
            effect.close()
            self._internal_error(n, action.syscall, e)

    def redecide(self, action) -> Decision:
        """The decision for a held action now (new context arrived)."""
        action.counted = None            # (counted again by this decision)
        d = self._decide(action)
        if self.classifier is not None and action.type == A.PROCESS_EXEC:
            d = self._decide_semantic(action, d)
        return d

    def _judge_moved_tree(self, action, decision: Decision, effect) -> Decision:
        """A directory rename is also the renames of everything it moves (policy.moved_tree):
        the stricter decision wins. Observe mode decides nothing, so it walks nothing."""
        if not isinstance(effect, AtCall) or self.engine.observe:
            return decision
        return stricter(decision, judge_moved_tree(self._decide, action, effect.fd1, effect.name1,
                                                   effect.fd2, effect.name2))

    def _judge_interpreter(self, action, decision: Decision) -> Decision:
        """The interpreter the kernel loads for this file ('#!', PT_INTERP) runs too: it is
        decided as an exec of its own, and the stricter decision wins."""
        ipath = action.detail["interpreter"]
        run = A.Action(A.PROCESS_EXEC, ipath, action.syscall, action.pid, action.tid, 0, (ipath,),
                       {"argv": action.detail.get("argv"), "interpreter_of": action.target},
                       notif=action.notif, exe=action.exe)
        return stricter(decision, self._decide(run).noted(
            f"the interpreter {ipath} that runs {action.target}"))

    def _decide(self, action) -> Decision:
        if self.journal.failed:
            return Decision(Result.DENY, "journal", self.journal.failed, errno.EIO)
        if action.type in _EGRESS:
            egress = action.detail.get("egress")
            err = errno.ECONNREFUSED if action.type == A.NET_CONNECT else errno.EPERM
            if egress == "deny":
                return Decision(Result.DENY, "egress", action.detail.get("egress_reason", ""), err)

        if self.governing and not self.governing.isdisjoint(action.paths) and \
                action.type != A.FILE_READ:
            return Decision(Result.DENY, "governing-profile", "the profile that governs this "
                            "session cannot be changed from inside it (edit it outside the "
                            "sandbox)", errno.EACCES)
        if self.protected and any(_inside(p, q) for p in action.paths for q in self.protected):
            return Decision(Result.DENY, "protected", "the session's journal, signing keys and "
                            "supervisor state are off limits to the sandbox", errno.EACCES)
        try:
            d = self.engine.decide(action, self.ctx)
        except Exception as e:  # noqa: BLE001
            return Decision(Result.DENY, "policy-error", f"policy evaluation failed: {e!r}",
                            errno.EACCES)
        if d.rule == "default" and action.detail.get("egress") == "broker" and d.result is Result.ALLOW:
            # say which destination rule let it out
            return Decision(Result.ALLOW, "egress", f"allowed destination "
                            f"{action.detail.get('egress_rule')} (made by the supervisor)")
        return d

    def _enforce(self, n: Notification, effect: Effect, action, verify: bool = False) -> int:
        try:
            if isinstance(effect, Continue):
                if isinstance(effect, ExecContinue):
                    # Accepted before the answer: a check still running for an earlier exec
                    # of the same process (`sh -c 'exec prog'`) may see this image the moment
                    # the kernel loads it, and must not take it for a swapped file.
                    self.allowed_images.add(effect.dev_ino)
                    if effect.loads.image is not None:
                        self.allowed_images.add(effect.loads.image)    # (a script's ELF)
                    r = self._continue_exec(n, effect, action, verify)
                    if r < 0:
                        return r
                    if action is not None:
                        self.ctx.programs_seen.add(action.target)
                    self._exe_cache.clear()
                    if self.fast is not None:
                        self.fast.invalidate_exe()
                else:
                    self.backend.answer_continue(n)
                return 0
            if isinstance(effect, ExecRestart):
                return self._restart_exec(n, effect)
            if action is not None and _destructive(action) and not self._intent(n, action):
                r = -errno.EIO
            else:
                r = effect.perform()
            if getattr(effect, "replacement", -1) >= 0:
                r = self._install_brokered(n, effect, r, action)
            if r < 0:
                self.backend.answer_error(n, -r)
                return r
            if isinstance(effect, OpenFile):
                fd = self.backend.answer_with_fd(n, r, effect.cloexec)
                # The file was opened (maybe created or truncated) before the caller's fd
                # table could refuse it (EMFILE): natively nothing would have happened;
                # the receipt says it did.
                effect.performed = fd < 0
                if fd == -errno.EMFILE and effect.undo_create():
                    effect.performed = False        # the file it created is gone again
                if fd == -errno.EINPROGRESS:
                    self.answer_lost(n.tid)
                elif fd < 0 and fd != -errno.ENOENT:
                    self.backend.answer_error(n, -fd)
                r = fd
            else:
                self.backend.answer_value(n, r)
            if action is not None:
                self._track(action)
            return r
        finally:
            effect.close()

    def _restart_exec(self, n: Notification, effect) -> int:
        """MODIFY append_args: the exec is made again with the new argv, by a thread of its
        own that stays the thread's tracer until the exec is over (enforce.exec_argv); this
        one goes on deciding (the restarted exec is notified again). A failure before the
        call is answered refuses the exec; after, it kills the process."""
        def work(may_answer, answered) -> None:
            def answer_restart() -> None:
                if not may_answer():
                    raise RestartUnavailable(errno.ETIMEDOUT, "the decision stopped waiting")
                self.backend.answer_error(n, ERESTARTNOINTR)
            # however the restart ends, the thread's next exec is not "the restart itself"
            # any more: forgotten before the thread is let go (a restarted exec that failed
            # left it, and a later exec ending with the arguments was continued unchecked)
            def release() -> None:
                self._restart_checks.pop(n.tid, None)
                self._restart_tracing.discard(n.tid)
            self._restart_tracing.add(n.tid)
            try:
                outcome = effect.perform(answer_restart, lambda: self.backend.still_pending(n),
                                         answered, before_release=release,
                                         also_check=lambda pid: _first_failure(
                                             self._restart_checks.get(n.tid, ()), pid))
            except BaseException:
                release()
                raise
            if outcome == "killed" and effect.failed:
                self.journal.append({"type": "enforcement", "tid": n.tid, "reason":
                                     f"exec {effect.failed}; killed in its exec stop, before "
                                     f"its first instruction"})
            else:
                self._journal_gate(n, outcome, "without the arguments a modify: append_args "
                                               "rule added")
            return outcome
        return self._as_tracer(n, "aarm-exec-restart", "add its arguments", work)

    def _continue_exec(self, n: Notification, effect: ExecContinue, action, verify: bool) -> int:
        """Let an allowed exec go on. What the decision read from the caller (the path;
        the argv when a rule's argv pattern or a human's approval judged it; for a
        classified tool its argv, git configuration and cwd) is checked again in the new
        program's exec stop, before its first instruction (`_gated_exec`); so is the
        environment a modify: scrub_env rule cleaned. Without ptrace here the checks
        run after the exec instead (enforce.exec_verify: the program may run a moment
        first), except scrub_env's, whose exec is then refused. Returns 0 once continued,
        -errno when refused."""
        from aarm_sandbox.enforce import exec_env
        effect.basis = None if action is None else action.exec_basis
        if effect.basis is None and action is not None and (self._argv_rules or verify):
            # a rule's argv pattern, or a human's approval, judged these arguments
            effect.basis = ExecBasis(tuple(os.fsencode(a) for a in action.detail.get("argv") or ()),
                                     None, None)
        watch = self.verify_exec or verify
        checks: list = []
        if effect.env_gate is not None:
            patterns = effect.env_gate
            checks.append(lambda pid: None if exec_env.env_clean(pid, patterns) else
                          "ran with a variable a modify: scrub_env rule removed (rewritten by "
                          "another thread)")
        stop_checks: list = []
        if watch:
            stop_checks.append(lambda pid: None if image_loaded(pid, effect) else
                               "loaded a different file than the one decided on (its path "
                               "was changed meanwhile)")
        if effect.basis is not None:
            basis = effect.basis
            stop_checks.append(lambda pid: (lambda why: why and f"ran with {why} (rewritten "
                                            f"by another thread)")(
                basis_differs(pid, basis, effect.is_script)))
        # (where execs may not be held: their process and argument area, taken while the
        # thread still waits, for the watch after the exec)
        # (only where the new image may be the old one's file: the one sign then)
        same_file = effect.before is not None and effect.before in (
            effect.dev_ino, effect.loads.image, *effect.loads.alt_images)
        mark = exec_mark(n.tid) if (self._exec_stops is not True and stop_checks and
                                    same_file) else NO_MARK
        if n.tid in self._restart_tracing:
            # the restarted exec of an append_args rule (whatever it was decided as): traced
            # already by its restart's tracer, which runs these in its exec stop
            if mark[1] >= 0:
                os.close(mark[1])
            self._restart_checks[n.tid] = checks + stop_checks
            self.backend.answer_continue(n)
            return 0
        if self._exec_stops is not False:
            checks += stop_checks
        if checks:
            r = self._gated_exec(n, checks, required=effect.env_gate is not None)
            if r != _NO_EXEC_STOP:
                if mark[1] >= 0:
                    os.close(mark[1])
                return r
        else:
            self.backend.answer_continue(n)
        if stop_checks:
            self.exec_verifier.watch(n.tid, effect, mark)
        return 0


    def _gated_exec(self, n: Notification, checks: list, required: bool) -> int:
        """Continue the exec with a tracer attached, which runs every check(pid) in the new
        program's exec stop - each returns None, or what the program ran that was not
        decided on - and kills it there at the first that fails; an exec that fails ends
        the tracing on its way back (the tracer's interrupt). Returns 0 once continued,
        -errno when refused; when ptrace is refused here: -errno if `required`, else
        _NO_EXEC_STOP with the exec continued (the caller watches it instead)."""
        from aarm_sandbox.enforce.exec_argv import detach, gate_exec, interrupt, seize_for_exec
        failed: list[str] = []

        def check(pid: int) -> bool:
            why = _first_failure(checks, pid)
            if why:
                failed.append(why)
            return not why

        def work(may_answer, answered) -> str:
            try:
                seize_for_exec(n.tid)
            except RestartUnavailable as e:
                # Refused for this thread only (ptrace works here): refuse the exec. Refused
                # everywhere (the environment's policy - yama and Landlock say EPERM, SELinux
                # and AppArmor EACCES - found once by a probe): watch execs after they start.
                if not self.backend.still_pending(n):
                    raise RestartUnavailable(errno.ESRCH, f"thread {n.tid} left its exec") from None
                if required or not self._ptrace_refused_here():
                    raise
                if may_answer():
                    self.backend.answer_continue(n)
                answered(_NO_EXEC_STOP)
                return "not traced"
            self._exec_stops = True             # (ptrace works here)
            try:
                interrupt(n.tid)
                if not self.backend.still_pending(n) or not may_answer():
                    raise RestartUnavailable(errno.ESRCH, f"thread {n.tid} left its exec")
            except BaseException:
                detach(n.tid)
                raise
            self.backend.answer_continue(n)
            answered(0)
            outcome = gate_exec(n.tid, check)
            if outcome == "killed":
                self.journal.append({"type": "enforcement", "tid": n.tid, "reason":
                                     f"exec {failed[0] if failed else 'failed its check'}; "
                                     f"killed in its exec stop, before its first instruction"})
            else:
                self._journal_gate(n, outcome, "")
            return outcome
        return self._as_tracer(n, "aarm-exec-gate", "check it before it runs", work)

    def _ptrace_refused_here(self) -> bool:
        """Whether the environment refuses ptrace (a probe on a child of the supervisor,
        made once): then execs are checked after they start, said once on stderr."""
        with self._exec_stops_lock:
            if self._exec_stops is None:
                ok, why = ptrace_works()
                self._exec_stops = ok
                if not ok:
                    print(f"aarm-sandbox: note: {why}: ptrace is refused here by the "
                          "container runtime's seccomp profile, an LSM or yama, so execs are "
                          "checked after they start "
                          "instead of before their first instruction, where a fast program "
                          "can act first (allow ptrace to the supervisor to close that; "
                          "aarm-sandbox doctor)", file=sys.stderr)
            return self._exec_stops is False

    def _journal_gate(self, n: Notification, outcome: str, what: str) -> None:
        """An exec stopped by its check (gate_exec): killed in its exec stop because it ran
        `what` (a thread rewrote the array meanwhile), or not over after 30 s."""
        if outcome == "killed":
            why = (f"exec ran {what} (rewritten by another thread); killed in its exec stop, "
                   f"before its first instruction")
        elif outcome == "timeout":
            why = f"exec of thread {n.tid} was not over after 30 s under its check; process killed"
            print(f"aarm-sandbox: error: {why}", file=sys.stderr)
        else:
            return
        self.journal.append({"type": "enforcement", "tid": n.tid, "reason": why})

    def _as_tracer(self, n: Notification, name: str, purpose: str, work) -> int:
        """Run work(may_answer, answered) in a thread of its own, which may become the
        calling thread's tracer (every ptrace call must come from the thread that attached)
        and answers the notification - only if may_answer() says the decision still waits
        for it - then reports answered(result); returns the first result reported. A
        refusal before any answer (no ptrace here, unreadable arguments) denies the exec;
        any other failure kills the process (it may have been answered: fail closed)."""
        ready = threading.Event()
        result: list[int] = []
        lock = threading.Lock()
        state = {"answered": False, "abandoned": False}

        def may_answer() -> bool:
            with lock:
                if state["abandoned"]:
                    return False
                state["answered"] = True
                return True

        def answered(r: int) -> None:
            result.append(r)
            ready.set()

        def run() -> bool:
            try:
                return work(may_answer, answered) in _CLEAN_OUTCOMES and no_tracee_left()
            except (RestartUnavailable, DecodeError) as e:
                if e.errno == errno.ESRCH:
                    # (the thread ended meanwhile: killed, or another thread's exec)
                    if may_answer():
                        self.backend.answer_error(n, errno.ESRCH)
                    answered(-errno.ESRCH)
                    return False
                why = f"exec refused: cannot {purpose} ({e})"
                print(f"aarm-sandbox: {why}", file=sys.stderr)
                self.journal.append({"type": "enforcement", "tid": n.tid, "reason": why})
                if may_answer():
                    self.backend.answer_error(n, errno.EPERM)
                answered(-errno.EPERM)
            except Exception as e:  # noqa: BLE001 - answered maybe: fail closed
                why = f"exec killed: could not {purpose} ({e})"
                kill_process_of(n.tid)
                print(f"aarm-sandbox: error: {why}", file=sys.stderr)
                self.journal.append({"type": "enforcement", "tid": n.tid, "reason": why})
                answered(-errno.EPERM)
            return False            # (maybe still attached: the thread ends, which detaches)

        self._tracers.submit(run)
        if not ready.wait(10):
            with lock:
                if not state["answered"]:
                    # the tracer never got to answer: refuse it here, and it never will
                    state["abandoned"] = True
                    self.backend.answer_error(n, errno.EPERM)
                    return -errno.EPERM
            ready.wait()
        return result[0]

    def _decide_semantic(self, action, decision: Decision) -> Decision:
        """An exec is also every semantic action its argv means (through launchers like
        sh -c, env, xargs, python -c); the most restrictive decision among them wins. The
        syscall-level checks still apply to what the program then does."""
        argv = action.detail.get("argv") or []
        try:
            cwd = os.readlink(f"/proc/{action.tid}/cwd")
        except OSError:
            cwd = None
        envp, tid = action.envp, action.tid
        env_read: list[dict[str, str]] = []

        def config_env() -> dict[str, str]:
            # the GIT_CONFIG* variables the exec passes on, read while it waits (as argv was);
            # DecodeError -> one unknown configuration (see exec_catalog._git_env_config)
            env = read_env_prefixed(tid, envp, ENV_PREFIX) if envp else {}
            env_read.append(env)
            return env
        try:
            semantic = self.classifier.classify(list(argv), exe=action.target, cwd=cwd,
                                                env=config_env)
        except Exception as e:  # noqa: BLE001 - a classifier bug must not allow
            return Decision(Result.DENY, "classifier-error", f"exec classification failed: {e!r}",
                            errno.EPERM)
        if self.classifier.lookup(argv[0] if argv else "", action.target) is not None:
            # other arguments could have meant other actions: the program must run with
            # these (checked in its exec stop)
            action.exec_basis = ExecBasis(tuple(os.fsencode(a) for a in argv),
                                          env_read[0] if env_read else None, cwd)
        if not semantic:
            return decision
        action.detail["semantic"] = [s.as_record() for s in semantic]
        best = decision
        for s in semantic:
            sub = A.Action(s.type, s.target, action.syscall, action.pid, action.tid,
                           paths=(s.target,) if s.target.startswith("/") else ())
            d = self._decide(sub)
            if RANK[d.result] < RANK[best.result]:
                best = Decision(d.result, d.rule, f"{s.type} {s.target}: {d.reason}",
                                d.errno or errno.EPERM, d.shadow, d.modify)
        if best is not decision and best.result is Result.MODIFY:
            # a semantic action's transform (e.g. a quarantine for `rm`) cannot be made of
            # the exec itself; the exec's own (scrub_env, append_args) can
            best = Decision(Result.DENY, best.rule, best.reason + " (modify: not for exec)",
                            errno.EPERM)
        return best

    def _modify(self, action, decision: Decision, effect: Effect, n: Notification):
        """The MODIFY transforms: (effect to perform instead, what it became) or
        (effect, None) when the transform does not apply (the caller denies)."""
        if decision.modify == "scrub_env" and isinstance(effect, ExecContinue):
            from aarm_sandbox.enforce import exec_env
            envp = n.args[2] if action.syscall == "execve" else n.args[3]
            try:
                removed = exec_env.scrub(n.tid, envp, decision.params)
            except DecodeError as e:
                print(f"aarm-sandbox: cannot scrub the environment of {action.target}: {e}",
                      file=sys.stderr)
                return effect, None
            effect.env_gate = tuple(decision.params)    # checked again in the exec stop
            return effect, {"type": "process.exec", "transform": "scrub_env",
                            "original": "process.exec", "removed": removed}
        if decision.modify == "append_args" and isinstance(effect, ExecContinue):
            return self._append_args(action, decision, effect, n)
        if (decision.modify == "quarantine" and action.type == A.FILE_DELETE and
                isinstance(effect, AtCall) and effect.op == "unlink" and self.quarantine is not None):
            modified = {"type": "file.quarantine", "transform": "quarantine",
                        "original": "file.delete"}
            return QuarantineDelete(effect, self.quarantine, action.target, modified), modified
        if (decision.modify in ("private_copy", "read_only") and action.type == A.FILE_WRITE and
                isinstance(effect, OpenFile) and not effect.opath_passthrough and not effect.blocking):
            if decision.modify == "read_only":
                flags = (effect.flags & ~(os.O_ACCMODE | os.O_TRUNC | os.O_CREAT | os.O_EXCL |
                                          os.O_APPEND)) | os.O_RDONLY
                return effect.replace(flags=flags), {"type": "file.read", "transform": "read_only",
                                                      "original": "file.write"}
            copy = self._private_copy(effect, action.target)
            if copy is None:
                return effect, None
            effect.close()
            modified = {"type": "file.write", "transform": "private_copy", "original": "file.write",
                        "copy": copy[1]}
            return effect.replace(dirfd=-1, objfd=copy[0],
                                  flags=effect.flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW),
                                  opened=-1), modified
        return effect, None

    def _append_args(self, action, decision: Decision, effect, n: Notification):
        """The restarted call (it ends with the arguments): continue it, its tracer checks
        the exec stop. Any other call is restarted with them (enforce.exec_argv)."""
        extra = tuple(decision.params)
        argv = action.detail.get("argv") or []
        modified = {"type": "process.exec", "transform": "append_args", "original": "process.exec",
                    "appended": list(extra)}
        # (its restart's tracer holds the thread until the restarted exec is over, however
        # long that exec's decision takes)
        restarted = n.tid in self._restart_tracing
        if extra and tuple(argv[len(argv) - len(extra):]) == extra and restarted:
            # the restart's tracer checks the new program in its exec stop
            effect.require_argv_tail = extra
            return effect, modified
        # (an original call that already ends with them is restarted too: only the
        # restart's tracer checks the program in its exec stop, before it runs; the check
        # after the exec came too late for a thread rewriting its own argv meanwhile)
        if restarted:
            print(f"aarm-sandbox: the argv of {action.target} did not come back with "
                  f"{' '.join(extra)} after a restart", file=sys.stderr)
            return effect, None                   # restarted once already: deny
        argvp = n.args[1] if action.syscall == "execve" else n.args[2]
        return ExecRestart(effect, n.tid, n.nr, argvp, extra), {**modified, "restarted": True}

    def _private_copy(self, effect: OpenFile, target: str) -> tuple[int, str] | None:
        """A session-private copy of the file (outside the sandbox's view), pinned with
        O_PATH; writes then change the copy, never the original. Read through the same
        pinned objects the open would have used."""
        import shutil
        import stat as stat_mod
        d = self.overlay_dir
        if d is None:
            return None
        src_fd = -1
        try:
            if effect.objfd >= 0:
                src_fd = os.open(f"/proc/self/fd/{effect.objfd}", os.O_RDONLY | os.O_CLOEXEC)
            else:
                src_fd = os.open(effect.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC |
                                 os.O_NONBLOCK, dir_fd=effect.dirfd)
            st = os.fstat(src_fd)
            if not stat_mod.S_ISREG(st.st_mode):
                return None
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._copies = getattr(self, "_copies", 0) + 1
            dst = d / f"{self._copies:06d}-{os.path.basename(target)[:100]}"
            with os.fdopen(os.dup(src_fd), "rb") as src, open(dst, "xb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(dst, stat_mod.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            return os.open(dst, os.O_PATH | os.O_CLOEXEC), str(dst)
        except OSError as e:
            print(f"aarm-sandbox: cannot make a private copy of {target}: {e}", file=sys.stderr)
            return None
        finally:
            if src_fd >= 0:
                os.close(src_fd)

    def _install_brokered(self, n: Notification, effect, r: int, action) -> int:
        """The supervisor's outside socket takes the place of the target's (before the
        answer, so the target's next call already uses it)."""
        ino = os.fstat(effect.replacement).st_ino
        rr = self.backend.replace_fd(n, effect.replacement, effect.target_fd, effect.cloexec)
        if rr < 0:
            return rr
        self.dstate.brokered.add(ino)
        if action is not None and action.detail.get("proto") == "udp":
            self.dstate.udp_brokered = True     # (see DecodeState.udp_brokered)
        if self.meter is not None and action is not None and action.detail.get("proto") == "tcp":
            self.meter.track(effect.replacement, action.target, str(n.id))
        return r

    def _exe(self, tid: int) -> str | None:
        """The acting program, read while the caller is blocked in its syscall, cached
        like the native fast path does (100 ms per TID, dropped on every allowed exec):
        a stale name would need the pid range to wrap within the TTL."""
        now = time.monotonic()
        hit = self._exe_cache.get(tid)
        if hit is not None and now - hit[1] < EXE_TTL:
            return hit[0]
        exe = _exe_of(tid)
        if exe is not None:
            if len(self._exe_cache) > 4096:
                self._exe_cache.clear()
            self._exe_cache[tid] = (exe, now)
        return exe

    def _intent(self, n: Notification, action) -> bool:
        to = action.paths[1] if action.type == A.FILE_RENAME and len(action.paths) > 1 else None
        return self.journal.intent(n.id, action.type, action.syscall, n.tid, action.target, to)

    def _enforce_async(self, n, effect, action, decision, approval=None) -> None:
        try:
            outcome = self._enforce(n, effect, action, verify=approval is not None)
        except Exception as e:  # noqa: BLE001
            self.backend.answer_error(n, errno.EIO)
            outcome = -errno.EIO
            print(f"aarm-sandbox: internal error performing {action.type}: {e!r}", file=sys.stderr)
        finally:
            self.blocking_slots.release()
        self._receipt(action, decision, outcome, approval=approval,
                      executed=outcome >= 0 or effect.performed)

    def _track(self, action) -> None:
        """Context updates after an action really happened (SessionContext.executed); the
        count rule the fast path keeps a budget for is counted by its ledger."""
        ledger = self.ledger
        if ledger is not None and action.counted and ledger.rule.id in action.counted:
            exempt = action.type == A.FILE_DELETE and action.paths[0] in self.ctx.created_paths
            ledger.settle(self.ctx, held=action.budget_unit, counts=not exempt)
            action.budget_unit = False
        if self.ctx.executed(action, self.tmpdir, ledger.rule.id if ledger is not None else None):
            self._labels_moved()

    def _mounts_may_move(self, action) -> None:
        """A directory holding a mount point of the sandbox is about to be renamed (or
        exchanged): the mount moves with it, and the native fast path's list of mount
        points, whose deletes it hands over, would miss it at its new path."""
        if self.fast is None or self._fast_stopped or not self.mount_points:
            return
        if self._mount_ancestors is None:       # every directory above a mount point
            self._mount_ancestors = {a for m in self.mount_points
                                     for a in _ancestors(m.rstrip("/"))}
        if any((p.rstrip("/") or "/") in self._mount_ancestors for p in action.paths):
            self._stop_fast_path("a directory holding a mount point was renamed")

    def _labels_moved(self) -> None:
        """Sensitive data now also lives under a name no glob given to the native fast path
        matches."""
        self._stop_fast_path("sensitive data was renamed or linked")

    def _stop_fast_path(self, why: str) -> None:
        """What the native fast path was told at its start no longer holds: from here on
        every decision is Python's (slower, exact)."""
        if self.fast is not None and not self._fast_stopped:
            self._fast_stopped = True
            self.fast.disable()
            print(f"aarm-sandbox: note: {why}; the native fast path is off for the rest of "
                  "the session", file=sys.stderr)

    def _kill_after_exec(self, tgid: int, tid: int, why: str) -> None:
        try:
            os.kill(tgid, 9)
        finally:
            self.journal.append({"type": "enforcement", "tid": tid,
                                 "reason": f"{why}; process killed"})

    # ------------------------------------------------------------------------------------
    def _receipt(self, action, decision: Decision, outcome: int, approval: dict | None = None,
                 executed: bool | None = None) -> None:
        ctx = self.ctx
        if action.budget_unit:                  # decided, never performed: the unit comes back
            action.budget_unit = False
            self.ledger.settle(ctx, held=True, counts=False)
        ctx.action_counts[action.type] += 1
        ctx.decision_counts[decision.result.value] += 1
        if executed is None:
            executed = decision.result in _APPROVED
        rec = {"type": "receipt", "action": action.as_record(),
               "decision": {"result": decision.result.value, "rule": decision.rule,
                            "reason": decision.reason},
               "outcome": _outcome(executed, outcome)}
        if approval is not None:
            rec["decision"]["approval"] = approval
        ctx.recent.append((action.type, action.target, decision.result.value,
                           executed and outcome >= 0))
        if decision.shadow is not None:
            rec["decision"]["would"] = decision.shadow.value
        classes = ctx.classes_of(action.paths) if (ctx.sensitive is not None or
                                                   ctx.tainted_files or
                                                   ctx.class_labels is not None) else None
        if classes:
            rec["data_classes"] = classes
            ctx.data_classes.update(classes)
            if outcome >= 0 and ctx.tainted is None and _reads(action):
                ctx.tainted = action.target    # read: the session now holds sensitive data
        self.journal.append(rec)
        if self.explain:
            print(f"aarm-sandbox: {decision.result.value:7} {action.type} {action.target} "
                  f"[{decision.rule}] {decision.reason}", file=sys.stderr)

    def dns_receipt(self, q: dict) -> None:
        """A query the session's DNS stub answered (its own policy check: allowed names
        only): counted and journaled like every other decision (action dns.query)."""
        allowed = bool(q.get("allowed"))
        result = "allow" if allowed else "deny"
        reason = ("an allowed destination name" if allowed else "the name is not in the allowed "
                  "destinations (--allow-net or the profile's egress); answered NXDOMAIN, "
                  "nothing forwarded")
        self.ctx.action_counts[A.DNS_QUERY] += 1
        self.ctx.decision_counts[result] += 1
        self.journal.append({"type": "receipt",
                             "action": {"type": A.DNS_QUERY, "target": q.get("name", ""),
                                        "syscall": "(dns stub)", "pid": 0, "tid": 0, "exe": None,
                                        "qtype": q.get("qtype"), "client": q.get("client")},
                             "decision": {"result": result,
                                          "rule": "egress-name" if allowed else "egress",
                                          "reason": reason},
                             "outcome": {"executed": allowed, "return": 0, "rcode": q.get("rcode"),
                                         "answers": q.get("answers", [])}})
        if not allowed:
            self.report_denial(A.DNS_QUERY, q.get("name", ""), reason)

    def report_denial(self, type_: str, target: str, reason: str) -> None:
        """Every denial is said on stderr (and counted for the closing summary)."""
        self.denials.append((type_, target, reason))
        if not self.explain:
            print(f"aarm-sandbox: denied {type_} {target}: {reason}", file=sys.stderr)

    @staticmethod
    def _with_notif(n: Notification, record: dict) -> dict:
        """An error record answering, before anything was performed, a notification the
        native fast path wrote an intent line for names its notif and says nothing was
        performed: readers settle the intent with it, instead of listing an action that
        may have happened unrecorded."""
        if n.intent:
            record["notif"] = str(n.id)
            record["performed"] = False
        return record

    def _internal_error(self, n: Notification, name: str, e: Exception) -> None:
        try:
            self.backend.answer_error(n, errno.EPERM)
        finally:
            # (no notif: whether the action was performed before the error is unknown, so
            # an intent line for it stays open - it may have happened unrecorded)
            self.journal.append({"type": "error", "syscall": name, "tid": n.tid, "errno": "EPERM",
                                 "reason": f"supervisor error (denied): {e!r}"})
            if self.verbose:
                import traceback            # (only here: ~3 ms of every startup otherwise)
                traceback.print_exc()
            print(f"aarm-sandbox: internal error on {name}, denied: {e!r}", file=sys.stderr)


def _ancestors(path: str):
    """The directories above an absolute path, nearest first ("/a/b/c": "/a/b", "/a", "/")."""
    while path not in ("", "/"):
        path = path.rsplit("/", 1)[0] or "/"
        yield path


_ERRNO_NAMES = errno.errorcode


def _outcome(allowed: bool, ret: int) -> dict:
    """`allowed` with ret < 0: it happened although the call failed (an open whose fd
    could not be installed: EMFILE after the file was created or truncated)."""
    if ret < 0:
        return {"executed": allowed, "return": ret, "errno": _ERRNO_NAMES.get(-ret, str(-ret))}
    return {"executed": allowed, "return": ret}


def _destructive(action) -> bool:
    """Actions a crash must never hide: they get an intent line before they happen."""
    t = action.type
    if t in _DESTRUCTIVE:
        return True
    return bool(action.flags & os.O_TRUNC) and t in (A.FILE_WRITE, A.FILE_CREATE) and \
        action.syscall in _OPEN_SYSCALLS


def _exe_of(tid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{tid}/exe")
    except OSError:
        return None


def _reads(action) -> bool:
    """The action gave the session the file's content: a read, or a write-open that can
    read too (O_RDWR)."""
    return action.type == A.FILE_READ or (action.type == A.FILE_WRITE and
                                          action.flags & os.O_ACCMODE == os.O_RDWR)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _first_failure(checks, pid: int) -> str | None:
    """The first exec-stop check that fails: what the program ran that was not decided on
    (a check that cannot read what it checks, or fails in any way, fails too)."""
    for one in checks:
        try:
            why = one(pid)
        except OSError as e:
            why = f"could not be checked ({e.strerror or e})"
        except Exception as e:  # noqa: BLE001 - a bug in a check must not let it run
            why = f"could not be checked ({e!r})"
        if why:
            return why
    return None
