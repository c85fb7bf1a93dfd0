"""Profile schema (v1), validated once at load time with pydantic.

Nothing here runs per syscall: `compiler.py` turns a validated Profile into matchers.
"""
from __future__ import annotations

import errno as errno_mod
import fnmatch
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aarm_sandbox.actions.action import ALL_TYPES

DecisionName = Literal["allow", "deny", "modify", "step_up", "defer"]
# Each MODIFY transform and the one action type it can transform.
MODIFY_APPLIES_TO = {"quarantine": "file.delete", "private_copy": "file.write",
                     "read_only": "file.write", "scrub_env": "process.exec",
                     "append_args": "process.exec"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_action_globs(values: list[str]) -> list[str]:
    for v in values:
        if not any(fnmatch.fnmatchcase(t, v) for t in ALL_TYPES):
            raise ValueError(f"{v!r} matches no action type; known types: {', '.join(ALL_TYPES)}")
    return values


class Rule(_Strict):
    """One rule. All given conditions must hold for the rule to match an action."""
    id: str = Field(min_length=1)
    actions: list[str] = Field(min_length=1, description="action type globs, e.g. file.*")
    paths: list[str] = Field(default_factory=list,
                             description="path set names or globs: some touched path is inside")
    outside: list[str] = Field(default_factory=list,
                               description="path set names or globs: some touched path is outside all")
    except_paths: list[str] = Field(default_factory=list, alias="except",
                                    description="touched paths matching these are ignored by this rule")
    existed_at_start: bool | None = Field(
        default=None, description="true: the touched path existed before the session started")
    count_over: int | None = Field(default=None, ge=0,
                                   description="match only after this many earlier executed matches this "
                                               "session (deleting what the session created does not count)")
    programs: list[str] = Field(
        default_factory=list, description="globs on the acting program (its resolved exe, "
                                          "e.g. /usr/bin/python3*)")
    argv: str | None = Field(
        default=None, description="process.exec: glob on the argv joined by spaces, e.g. "
                                  "'git push *--force*'")
    touches: list[str] = Field(
        default_factory=list, description="data classes (profile data_classes) some touched "
                                          "path belongs to")
    destinations: list[str] = Field(
        default_factory=list, description="net.*: destination set names or specs that name "
                                          "the destination")
    outside_destinations: list[str] = Field(
        default_factory=list, description="net.*: matches destinations none of these name "
                                          "(e.g. egress outside the partners set)")
    session_has: list[str] = Field(
        default_factory=list, description="composition: only once the session holds data of "
                                          "all these classes (e.g. [sensitive])")
    leaves_sandbox: bool | None = Field(
        default=None, description="net.*: true matches only connections/sends the supervisor "
                                  "would make outside the sandbox")
    within_seconds: float | None = Field(
        default=None, gt=0, description="with count_over: count only matches in this sliding "
                                        "window (more than N deletes in T seconds)")
    first_time: bool | None = Field(
        default=None, description="process.exec: true matches a program this workspace has "
                                  "not run before (remembered with --context-store)")
    requires_context: list[str] = Field(
        default_factory=list, description="context keys this rule needs (run --context "
                                          "KEY=VALUE); while one is missing the rule DEFERs")
    decision: DecisionName
    env_remove: list[str] = Field(
        default_factory=list, description="modify: scrub_env: variable name globs to remove "
                                          "(default: loader hooks, tokens, secrets, cloud keys)")
    append_args: list[str] = Field(
        default_factory=list, description="modify: append_args: arguments added at the end "
                                          "of the argv the program is executed with (e.g. "
                                          "[--dry-run])")
    modify: Literal["quarantine", "private_copy", "read_only", "scrub_env",
                    "append_args"] | None = Field(
        default=None, description="with decision modify: the transform (quarantine: a delete "
                                  "moves the file into the session's trash, undone by "
                                  "`aarm-sandbox restore`; private_copy: a write-open opens a "
                                  "session-private copy, the original stays untouched; "
                                  "read_only: a write-open is opened read-only; scrub_env: "
                                  "an exec passes on an environment without env_remove; "
                                  "append_args: an exec runs with append_args added to its "
                                  "argv)")
    reason: str = ""
    errno: str | None = Field(default=None, description="errno name for deny, e.g. EACCES")
    timeout: float | None = Field(
        default=None, gt=0, le=86400, description="step_up/defer: seconds the action may wait "
                                                  "for an answer; expiry denies (default: "
                                                  "--approval-timeout or settings.approval_timeout)")
    approvers: list[str] = Field(
        default_factory=list, description="step_up/defer: who may answer: terminal, control, "
                                          "user:NAME, uid:N (default: anyone the session trusts)")
    freeze: bool = Field(
        default=False, description="step_up/defer: freeze the whole sandboxed process tree "
                                   "while the action waits, thaw it after the answer")
    on_deadline: Literal["deny", "step_up"] = Field(
        default="deny", description="defer: at the deadline deny, or escalate to a human "
                                    "(step_up)")

    _check_actions = field_validator("actions")(classmethod(lambda cls, v: _check_action_globs(v)))

    @model_validator(mode="after")
    def _window_needs_a_count(self):
        if self.within_seconds is not None and self.count_over is None:
            raise ValueError("within_seconds needs count_over (more than N matches in T seconds)")
        return self

    @model_validator(mode="after")
    def _modify_has_a_transform(self):
        if (self.decision == "modify") != (self.modify is not None):
            raise ValueError(f"decision: modify needs `modify: {'|'.join(MODIFY_APPLIES_TO)}` "
                             "(and `modify` needs decision: modify)")
        if (self.modify == "append_args") != bool(self.append_args):
            raise ValueError("modify: append_args needs a non-empty `append_args: [ARG, ...]` "
                             "(and `append_args` needs modify: append_args)")
        if any("\0" in a for a in self.append_args):
            raise ValueError("append_args: an argument cannot contain a NUL byte")
        target = MODIFY_APPLIES_TO.get(self.modify)
        if target and any(not fnmatch.fnmatchcase(target, a) for a in self.actions):
            raise ValueError(f"modify: {self.modify} applies to {target} only (actions: [{target}])")
        return self

    @model_validator(mode="after")
    def _hold_fields_need_a_hold(self):
        holds = self.decision in ("step_up", "defer") or bool(self.requires_context)
        used = [f for f in ("timeout", "approvers", "freeze") if getattr(self, f)]
        if used and not holds:
            raise ValueError(f"{', '.join(used)}: only for rules that hold an action "
                             "(decision: step_up or defer, or requires_context)")
        defers = self.decision == "defer" or bool(self.requires_context)
        if self.on_deadline != "deny" and not defers:
            raise ValueError("on_deadline applies to deferred actions only (decision: defer or "
                             "requires_context)")
        for a in self.approvers:
            if not re.fullmatch(r"terminal|control|any|user:[A-Za-z0-9._-]+|uid:\d+", a):
                raise ValueError(f"approver {a!r}: expected terminal, control, any, user:NAME "
                                 "or uid:N")
        return self

    @field_validator("errno")
    @classmethod
    def _known_errno(cls, v: str | None) -> str | None:
        if v is not None and not isinstance(getattr(errno_mod, v, None), int):
            raise ValueError(f"unknown errno name {v!r} (use e.g. EACCES, EPERM, EROFS)")
        return v


class Settings(_Strict):
    intercept_reads: bool = Field(
        default=False, description="notify read-only opens too (slower; needed to deny reads)")
    network: Literal["loopback", "none"] = Field(
        default="loopback", description="loopback: empty namespace with lo up; none: not even lo")
    step_up: Literal["ask", "deny"] = Field(
        default="ask", description="deny: STEP_UP rules deny outright (no human in the loop)")
    approval_timeout: float = Field(
        default=120, gt=0, le=86400, description="seconds a held action (step_up/defer) waits "
                                                 "for an answer before it is denied")
    approval_rate: int = Field(
        default=30, ge=1, description="approval requests per minute per session; beyond, "
                                      "held actions are denied without asking (fatigue control)")
    max_pending: int = Field(default=4096, ge=1, description="held actions at once; beyond, denied")
    max_deferrals: int = Field(
        default=3, ge=1, description="a deferred action re-deferred after new context more "
                                     "than this many times is denied")
    mask: list[str] = Field(default_factory=list,
                            description="path sets made unreadable in the kernel (mount masks)")
    egress: list[str] = Field(
        default_factory=list,
        description="destinations the supervisor connects to on the sandbox's behalf: "
                    "[tcp://|udp://]HOST[:PORT] with HOST a name (*.example.com), IP or CIDR; "
                    "--allow-net adds to it. Names are answered by the session's DNS stub.")

    @field_validator("egress")
    @classmethod
    def _egress_specs(cls, v: list[str]) -> list[str]:
        from aarm_sandbox.net.destinations import parse_spec
        for spec in v:
            parse_spec(spec)            # DestSpecError is a ValueError: reported with the line
        return v


class Profile(_Strict):
    id: str = Field(min_length=1)
    version: int = 1
    description: str = ""
    extends: str | None = None
    settings: Settings = Field(default_factory=Settings)
    path_sets: dict[str, list[str]] = Field(default_factory=dict)
    destination_sets: dict[str, list[str]] = Field(
        default_factory=dict, description="named destination sets: [tcp://|udp://]HOST[:PORT] "
                                          "specs, usable in rules and settings.egress")
    data_classes: dict[str, list[str]] = Field(
        default_factory=dict, description="labels on paths: class name -> path set names or "
                                          "globs (e.g. pii: ['{workspace}/data/customers*'])")
    rules: list[Rule] = Field(default_factory=list)
    defaults: dict[str, DecisionName] = Field(
        default_factory=lambda: {"*": "allow"},
        description="decision when no rule matches, by action type glob (most specific first)")

    @field_validator("destination_sets")
    @classmethod
    def _destination_sets_parse(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        from aarm_sandbox.net.destinations import parse_spec
        for name, specs in v.items():
            for spec in specs:
                parse_spec(spec, origin=f"destination_sets.{name}")
        return v

    @model_validator(mode="after")
    def _rule_destinations_parse(self):
        """Entries that are not set names must be destination specs."""
        from aarm_sandbox.net.destinations import parse_spec
        for r in self.rules:
            for item in list(r.destinations) + list(r.outside_destinations):
                if item not in self.destination_sets:
                    parse_spec(item, origin=f"rule {r.id}")
        return self

    @field_validator("defaults")
    @classmethod
    def _default_keys(cls, v: dict[str, str]) -> dict[str, str]:
        _check_action_globs(list(v))
        return v
