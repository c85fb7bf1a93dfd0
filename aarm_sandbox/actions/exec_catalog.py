"""Exec catalog: name what an exec'd argv is about to do ("vcs.push.force", "db.ddl", ...).

The supervisor sees every execve with the resolved executable and the argv it copied out of
the target; this module turns that argv into SemanticActions so that policies can say
"deny vcs.push.force" instead of matching binaries and flag spellings.

Most knowledge is data (profiles/exec-catalog.yaml, format documented at its top); the hard
cases (SQL, curl/wget, git push refspecs, shell strings, interpreter one-liners) are small
named Python parsers. Launchers (sh -c, env, sudo, xargs, timeout, ld.so, ...) are unwrapped
recursively, each recorded in `via`.

This is a *classifier*, not a sandbox: shell strings and -c/-e code are parsed heuristically
(see _split_shell and _scan_python/_scan_node for the limits), so a determined agent can hide
intent from it. It must therefore never be the only control; the kernel-level file and network
mediation still applies to whatever the command really does. It never raises and bounds its
work (depth, steps, actions) because it runs on the supervisor's decision path.
"""
from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import sqlparse
import yaml
from sqlparse import sql as sqlnodes
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = ["SemanticAction", "Catalog", "CatalogError", "SEMANTIC_TYPES", "BUILTIN_CATALOG"]

BUILTIN_CATALOG = Path(__file__).resolve().parent.parent / "profiles_builtin" / "exec-catalog.yaml"

MAX_DEPTH = 8            # nested launchers (sh -c "env sudo xargs ...")
MAX_STEPS = 256          # simple commands classified per exec
MAX_ACTIONS = 512        # actions returned per exec
MAX_TEXT = 64 * 1024     # longest shell string / code / SQL we look at
MAX_SQL_STATEMENTS = 64
STATEMENT_PARAM_LIMIT = 500
STDIN_TARGET = "<stdin>"     # operands supplied at run time (xargs stdin), unknown to us
DYNAMIC_TARGET = "<dynamic>"  # a computed argument in -c/-e code
DEFAULT_REMOTE = "<default>"  # git push without a remote: whatever the branch tracks

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_VERSION_SUFFIX = re.compile(r"^(.+?)[-_.]?\d+(?:\.\d+)*$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class CatalogError(ValueError):
    """A catalog file is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class SemanticAction:
    type: str
    target: str
    params: tuple[tuple[str, object], ...] = ()
    via: tuple[str, ...] = ()

    def as_record(self) -> dict:
        return {"type": self.type, "target": self.target, "params": dict(self.params),
                "via": list(self.via)}

    def param(self, name: str, default: object = None) -> object:
        for key, value in self.params:
            if key == name:
                return value
        return default


# --------------------------------------------------------------------------- catalog schema

_Scalar = str | int | float | bool | None


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str | None = None
    parser: str | None = None
    sub: list[str] = []
    verb: str | None = None
    when_any: list[str] = []
    when_all: list[str] = []
    unless_any: list[str] = []
    when_operand_any: list[str] = []
    when_dashdash: bool = False
    targets: str = "operands"
    target_kind: Literal["path", "url", "text"] = "text"
    skip_operands: int = Field(0, ge=0)
    last_operand_param: str | None = None
    target_options: list[str] = []
    default_target: str | None = None
    flag_params: dict[str, list[str]] = {}
    option_params: dict[str, list[str]] = {}
    params: dict[str, _Scalar] = {}

    @field_validator("type")
    @classmethod
    def _dotted_type(cls, value: str | None) -> str | None:
        if value is not None and not _TYPE_RE.match(value):
            raise ValueError(f"semantic type {value!r} must be dotted lowercase (e.g. file.delete)")
        return value

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: str) -> str:
        if value in _TARGET_MODES or value.startswith(("kv:", "literal:")):
            return value
        raise ValueError(f"targets {value!r}: expected one of {sorted(_TARGET_MODES)}, kv:KEY or literal:TEXT")

    @model_validator(mode="after")
    def _type_xor_parser(self) -> "_RuleModel":
        if (self.type is None) == (self.parser is None):
            raise ValueError("a rule needs exactly one of `type` or `parser`")
        if self.parser is not None and self.parser not in PARSERS:
            raise ValueError(f"unknown parser {self.parser!r}; known: {sorted(PARSERS)}")
        if self.sub and self.verb:
            raise ValueError("use `sub` or `verb`, not both")
        return self


class _ToolModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    aliases: list[str] = []
    extend: bool = False
    value_options: list[str] = []
    long_single_dash: bool = False
    cwd_option: str | None = None
    launcher: Literal["prefix", "shell", "python", "node", "find"] | None = None
    skip_assignments: bool = False
    skip_positionals: int = Field(0, ge=0)
    stop_flags: list[str] = []
    split_options: list[str] = []
    placeholder_options: list[str] = []
    default_command: list[str] = []
    params: dict[str, _Scalar] = {}
    implicit_operands: bool = False
    rules: list[_RuleModel] = []

    @model_validator(mode="after")
    def _launcher_or_rules(self) -> "_ToolModel":
        if self.launcher and self.rules:
            raise ValueError("a tool is either a `launcher` or has `rules`, not both")
        if not self.launcher and not self.rules and not self.extend:
            raise ValueError("a tool needs `launcher` or `rules`")
        return self


class _CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    tools: dict[str, _ToolModel] = {}


# --------------------------------------------------------------------------- compiled form

_TARGET_MODES = frozenset({"operands", "joined", "all_but_last", "cwd", "subcommand", "none"})


def _expand_braces(pattern: str) -> list[str]:
    """fnmatch has no {a,b}; the catalog uses it for subcommand alternatives."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [out for alt in match.group(1).split(",") for out in _expand_braces(head + alt + tail)]


@dataclass(frozen=True, slots=True)
class _WordMatcher:
    exact: frozenset[str]
    globs: tuple[str, ...]

    @classmethod
    def of(cls, pattern: str) -> "_WordMatcher":
        alts = _expand_braces(pattern)
        globby = tuple(a for a in alts if any(c in a for c in "*?["))
        return cls(frozenset(a for a in alts if a not in globby), globby)

    def __call__(self, word: str) -> bool:
        return word in self.exact or any(fnmatch.fnmatchcase(word, g) for g in self.globs)


@dataclass(frozen=True, slots=True)
class _Rule:
    type: str | None
    parser: str | None
    sub: tuple[_WordMatcher, ...]
    verb: str | None
    when_any: frozenset[str]
    when_all: frozenset[str]
    unless_any: frozenset[str]
    when_operand_any: frozenset[str]
    when_dashdash: bool
    targets: str
    target_kind: str
    skip_operands: int
    last_operand_param: str | None
    target_options: tuple[str, ...]
    default_target: str | None
    flag_params: tuple[tuple[str, frozenset[str]], ...]
    option_params: tuple[tuple[str, tuple[str, ...]], ...]
    params: tuple[tuple[str, object], ...]

    @classmethod
    def compile(cls, m: _RuleModel) -> "_Rule":
        return cls(m.type, m.parser, tuple(_WordMatcher.of(s) for s in m.sub), m.verb,
                   frozenset(m.when_any), frozenset(m.when_all), frozenset(m.unless_any),
                   frozenset(m.when_operand_any), m.when_dashdash, m.targets, m.target_kind,
                   m.skip_operands, m.last_operand_param, tuple(m.target_options), m.default_target,
                   tuple((k, frozenset(v)) for k, v in m.flag_params.items()),
                   tuple((k, tuple(v)) for k, v in m.option_params.items()),
                   tuple(m.params.items()))


@dataclass(frozen=True, slots=True)
class _Tool:
    name: str
    value_options: frozenset[str]
    long_single_dash: bool
    cwd_option: str | None
    launcher: str | None
    skip_assignments: bool
    skip_positionals: int
    stop_flags: frozenset[str]
    split_options: frozenset[str]
    placeholder_options: tuple[str, ...]
    default_command: tuple[str, ...]
    params: tuple[tuple[str, object], ...]
    implicit_operands: bool
    rules: tuple[_Rule, ...]
    known_long: frozenset[str]      # every long option the rules and parsers look at

    @classmethod
    def compile(cls, name: str, m: _ToolModel) -> "_Tool":
        rules = tuple(_Rule.compile(r) for r in m.rules)
        known = set(m.value_options)
        for r in rules:
            known |= r.when_any | r.when_all | r.unless_any
            for _n, flags in r.flag_params:
                known |= flags
            for _n, options in r.option_params:
                known |= set(options)
            known |= PARSER_OPTIONS.get(r.parser or "", frozenset())
        return cls(name, frozenset(m.value_options), m.long_single_dash, m.cwd_option, m.launcher,
                   m.skip_assignments, m.skip_positionals, frozenset(m.stop_flags),
                   frozenset(m.split_options), tuple(m.placeholder_options), tuple(m.default_command), tuple(m.params.items()),
                   m.implicit_operands, rules, frozenset(o for o in known if o.startswith("--")))


def _merge_tool(base: _ToolModel, extra: _ToolModel) -> _ToolModel:
    """A user entry with extend: true adds its rules in front (they win) and widens option lists."""
    merged = base.model_copy(deep=True)
    merged.rules = list(extra.rules) + list(base.rules)
    merged.value_options = sorted(set(base.value_options) | set(extra.value_options))
    merged.stop_flags = sorted(set(base.stop_flags) | set(extra.stop_flags))
    merged.aliases = sorted(set(base.aliases) | set(extra.aliases))
    merged.params = {**base.params, **extra.params}
    return merged


# --------------------------------------------------------------------------- argv parsing

@dataclass(slots=True)
class _Args:
    """One pass over a tool's arguments: options seen, their values, and positionals."""
    flags: set[str] = field(default_factory=set)
    values: dict[str, list[str]] = field(default_factory=dict)
    positionals: list[str] = field(default_factory=list)
    dashdash: int | None = None      # index into positionals where "--" was
    first_at: int | None = None      # index into the arguments of the first positional

    def value(self, names: tuple[str, ...] | frozenset[str]) -> str | None:
        for name in names:
            vals = self.values.get(name)
            if vals:
                return vals[-1]
        return None


def _parse_args(args: list[str], value_options: frozenset[str], long_single_dash: bool = False,
                all_long: frozenset[str] = frozenset()) -> _Args:
    """all_long: every long option of the tool (flags and value options), where known: a
    prefix of exactly one of them then stands for it, value included (getopt_long)."""
    parsed = _Args()
    i, n = 0, len(args)
    while i < n:
        tok = args[i]
        i += 1
        if parsed.dashdash is not None or len(tok) < 2 or tok[0] != "-":
            if parsed.first_at is None:
                parsed.first_at = i - 1
            parsed.positionals.append(tok)
        elif tok == "--":
            parsed.dashdash = len(parsed.positionals)
        elif tok[1] == "-" or long_single_dash:
            name, eq, val = tok.partition("=")
            if all_long and name not in all_long and name.startswith("--"):
                # getopt_long takes any unambiguous prefix (psql --comm)
                name = _unique_prefix(name, all_long) or name
            parsed.flags.add(name)
            if eq:
                parsed.values.setdefault(name, []).append(val)
            elif name in value_options and i < n:
                parsed.values.setdefault(name, []).append(args[i])
                i += 1
        else:
            i = _parse_short_cluster(tok, args, i, value_options, parsed)
    return parsed


def _unique_prefix(name: str, options) -> str | None:
    """The one long option `name` abbreviates (at least two letters after "--")."""
    if len(name) < 4:
        return None
    found = [o for o in options if o.startswith(name) and o.startswith("--")]
    return found[0] if len(found) == 1 else None


def _expand_long_flags(parsed: _Args, known: frozenset[str]) -> None:
    """Long options spelled as a prefix (`git push --force-w`, `reset --ha`: git and most
    getopt_long tools take any unambiguous one) count as every known option they could
    abbreviate: an ambiguous one the tool itself refuses, so matching more is safe."""
    for flag in list(parsed.flags):
        if flag.startswith("--") and len(flag) >= 4 and flag not in known:
            for option in known:
                if option.startswith(flag):
                    parsed.flags.add(option)
                    if flag in parsed.values:
                        parsed.values.setdefault(option, []).extend(parsed.values[flag])


def _parse_short_cluster(tok: str, args: list[str], i: int, value_options: frozenset[str],
                         parsed: _Args) -> int:
    """-rf is -r -f; -n5 and -n 5 give -n the value 5. Returns the next index to read."""
    for k in range(1, len(tok)):
        opt = "-" + tok[k]
        parsed.flags.add(opt)
        if opt in value_options:
            rest = tok[k + 1:]
            if rest:
                parsed.values.setdefault(opt, []).append(rest)
            elif i < len(args):
                parsed.values.setdefault(opt, []).append(args[i])
                return i + 1
            return i
    return i


def _skip_options(args: list[str], i: int, tool: _Tool) -> tuple[int, dict[str, str], bool]:
    """Walk a launcher's own options; return (index of the inner command, option values, stopped)."""
    values: dict[str, str] = {}
    n = len(args)
    while i < n:
        tok = args[i]
        if tok == "--":
            return i + 1, values, False
        if len(tok) < 2 or tok[0] != "-":
            return i, values, False
        i += 1
        name, eq, val = tok.partition("=") if tok[1] == "-" else (tok, "", "")
        if name in tool.stop_flags:
            return n, values, True
        if tok[1] == "-":
            if eq:
                values[name] = val
            elif name in tool.value_options and i < n:
                values[name] = args[i]
                i += 1
            continue
        for k in range(1, len(tok)):
            opt = "-" + tok[k]
            if opt in tool.stop_flags:
                return n, values, True
            if opt in tool.value_options:
                if tok[k + 1:]:
                    values[opt] = tok[k + 1:]
                elif i < n:
                    values[opt] = args[i]
                    i += 1
                break
    return i, values, False


def _resolve(path: str, cwd: str | None) -> str:
    if not path or path in (STDIN_TARGET, DYNAMIC_TARGET, "-") or path.startswith(("$", "<")):
        return path        # unexpanded shell variable or a placeholder: nothing to resolve
    if path.startswith("/"):
        return posixpath.normpath(path)
    if cwd and cwd.startswith("/"):
        return posixpath.normpath(posixpath.join(cwd, path))
    return path


def _tool_name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- the walk

@dataclass(frozen=True, slots=True)
class _Call:
    """One (possibly nested) command being classified and what led to it."""
    argv: list[str]
    cwd: str | None
    via: tuple[str, ...]
    depth: int
    extra: tuple[tuple[str, object], ...]   # params inherited from launchers (xargs: true)
    implicit: bool                          # operands exist that we cannot see
    # GIT_CONFIG* variables that launchers (env A=B, a shell's A=B cmd / export A=B) set on
    # top of the process environment
    env: tuple[tuple[str, str], ...] = ()


class _Walker:
    """Holds the budget and the output for one classify() call."""

    def __init__(self, catalog: "Catalog", env_reader: Callable[[], dict[str, str]] | None = None
                 ) -> None:
        self.catalog = catalog
        self.actions: list[SemanticAction] = []
        self.steps = MAX_STEPS
        self.truncated = False
        self._env_reader = env_reader
        self._env: dict[str, str] | None = None
        self.config_items: dict[tuple, list] = {}       # _git_env_config, by call.env

    def process_config_env(self) -> dict[str, str]:
        """The GIT_CONFIG* variables of the environment the exec passes on, read from the
        target only when a classification needs them (a git push, send-pack or clean);
        unreadable: one unknown configuration."""
        if self._env is None:
            try:
                self._env = dict(self._env_reader()) if self._env_reader else {}
            except Exception:  # noqa: BLE001 - unknown, and judged as such
                self._env = {_UNKNOWN_CONFIG: ""}
        return self._env

    def emit(self, call: _Call, type_: str, target: str, params: dict[str, object] | None = None) -> None:
        if len(self.actions) >= MAX_ACTIONS:
            self.truncated = True
            return
        merged = dict(params or {})
        merged.update(call.extra)      # the launcher knows better (find -exec rm: recursive-ish)
        self.actions.append(SemanticAction(type_, target, tuple(merged.items()), call.via))

    def opaque(self, call: _Call, reason: str) -> None:
        """Nesting beyond our limits is itself worth a policy decision."""
        tool = _tool_name(call.argv[0]) if call.argv else ""
        self.emit(call, "exec.opaque", tool, {"reason": reason})

    def run(self, call: _Call, exe: str | None = None) -> None:
        if not call.argv:
            return
        tool = self.catalog.lookup(call.argv[0], exe)
        if tool is None:
            return
        if call.depth > MAX_DEPTH:
            return self.opaque(call, "depth")
        if self.steps <= 0:
            return self.opaque(call, "budget")
        self.steps -= 1
        if tool.launcher:
            LAUNCHERS[tool.launcher](self, call, tool)
            return
        argv0 = _tool_name(call.argv[0])
        if tool.name == "git" and argv0.startswith("git-") and len(argv0) > 4:
            # git run as git-SUB (/usr/lib/git-core/git-push) is `git SUB`
            call = replace(call, argv=["git", argv0[4:]] + list(call.argv[1:]))
        self._apply_rules(call, tool)

    def inner(self, call: _Call, argv: list[str], label: str, *, cwd: str | None = None,
              extra: tuple[tuple[str, object], ...] = (), implicit: bool = False,
              env: tuple[tuple[str, str], ...] = ()) -> None:
        self.run(_Call(argv, cwd if cwd is not None else call.cwd, call.via + (label,),
                       call.depth + 1, call.extra + extra, call.implicit or implicit,
                       call.env + env))

    # -- data-driven rules

    def _apply_rules(self, call: _Call, tool: _Tool) -> None:
        parsed = _parse_args(call.argv[1:], tool.value_options, tool.long_single_dash)
        _expand_long_flags(parsed, tool.known_long)
        if tool.name == "git":
            if _git_alias(self, call, parsed):
                return
            _git_config_implies(parsed, lambda: _git_env_config(self, call))
        cwd = call.cwd
        if tool.cwd_option and tool.cwd_option in parsed.values:
            cwd = _resolve(parsed.values[tool.cwd_option][-1], cwd)
            call = replace(call, cwd=cwd)
        for rule in tool.rules:
            operands, resource = _match_rule(rule, parsed)
            if operands is None:
                continue
            if rule.parser:
                PARSERS[rule.parser](self, call, parsed, operands)
            else:
                self._emit_rule(call, rule, parsed, operands, resource)
            return

    def _emit_rule(self, call: _Call, rule: _Rule, parsed: _Args, operands: list[str],
                   resource: list[str]) -> None:
        params: dict[str, object] = dict(rule.params)
        for name, flags in rule.flag_params:
            params[name] = not flags.isdisjoint(parsed.flags)
        for name, options in rule.option_params:
            value = parsed.value(options)
            if value is not None:
                params[name] = value
        if resource:
            params["resource"] = " ".join(resource)
        operands = operands[rule.skip_operands:]
        targets = _rule_targets(rule, call, parsed, operands, params)
        if not targets and rule.target_options:
            value = parsed.value(rule.target_options)
            targets = [value] if value is not None else []
        if not targets and call.implicit and rule.targets not in ("cwd", "subcommand", "none"):
            targets = [STDIN_TARGET]
        if not targets and rule.default_target is not None:
            targets = [rule.default_target]
        for target in targets:
            if rule.target_kind == "path":
                target = _resolve(target, call.cwd)
            self.emit(call, rule.type or "", target, params)


def _match_rule(rule: _Rule, parsed: _Args) -> tuple[list[str] | None, list[str]]:
    """Operands left after the subcommand words (None = rule does not apply), and a verb's prefix."""
    pos = parsed.positionals
    resource: list[str] = []
    if rule.sub:
        if len(pos) < len(rule.sub) or (parsed.dashdash is not None and parsed.dashdash < len(rule.sub)):
            return None, resource
        if not all(m(w) for m, w in zip(rule.sub, pos)):
            return None, resource
        operands = pos[len(rule.sub):]
    elif rule.verb:
        limit = len(pos) if parsed.dashdash is None else parsed.dashdash
        try:
            at = pos.index(rule.verb, 0, limit)
        except ValueError:
            return None, resource
        operands, resource = pos[at + 1:], pos[:at]
    else:
        operands = pos
    flags = parsed.flags
    if rule.when_any and rule.when_any.isdisjoint(flags):
        return None, resource
    if rule.when_all and not rule.when_all <= flags:
        return None, resource
    if rule.unless_any and not rule.unless_any.isdisjoint(flags):
        return None, resource
    if rule.when_operand_any and rule.when_operand_any.isdisjoint(operands):
        return None, resource
    if rule.when_dashdash and parsed.dashdash is None:
        return None, resource
    return operands, resource


def _rule_targets(rule: _Rule, call: _Call, parsed: _Args, operands: list[str],
                  params: dict[str, object]) -> list[str]:
    mode = rule.targets
    if mode == "operands":
        return list(operands)
    if mode == "joined":
        return [" ".join(operands)] if operands else []
    if mode == "all_but_last":
        if rule.last_operand_param and operands:
            last = operands[-1]
            params[rule.last_operand_param] = _resolve(last, call.cwd) if rule.target_kind == "path" else last
        return list(operands[:-1])
    if mode == "cwd":
        return [call.cwd or "."]
    if mode == "subcommand":
        return [" ".join(parsed.positionals[:len(rule.sub)])]
    if mode.startswith("kv:"):
        prefix = mode[3:] + "="
        return [op[len(prefix):] for op in operands if op.startswith(prefix)]
    if mode.startswith("literal:"):
        return [mode[8:]]
    return []


# --------------------------------------------------------------------------- launchers

def _launch_prefix(walker: _Walker, call: _Call, tool: _Tool) -> None:
    """env/nice/timeout/sudo/xargs/...: skip the launcher's own syntax, classify the rest."""
    args = call.argv
    i, values, stopped = _skip_options(args, 1, tool)
    if stopped:
        return
    split = next((values[o] for o in tool.split_options if o in values), None)
    env: tuple[tuple[str, str], ...] = ()
    if tool.skip_assignments:
        while i < len(args) and _ASSIGNMENT.match(args[i]):
            env += _config_assignments(args[i:i + 1])
            i += 1
    i += tool.skip_positionals
    inner = list(args[i:])
    if split is not None:
        inner = _split_words(split) + inner
    if not inner:
        inner = list(tool.default_command)
    placeholder = next((values[o] for o in tool.placeholder_options if o in values), None)
    if placeholder:        # xargs -I{}: each {} is an item read from stdin
        inner = [w.replace(placeholder, STDIN_TARGET) for w in inner]
    cwd = _resolve(values[tool.cwd_option], call.cwd) if tool.cwd_option in values else None
    walker.inner(call, inner, tool.name, cwd=cwd, extra=tool.params, implicit=tool.implicit_operands,
                 env=env)


def _launch_shell(walker: _Walker, call: _Call, tool: _Tool) -> None:
    """sh -c STRING: everything after STRING is $0, $1...; we only read STRING."""
    args = call.argv
    i = 1
    while i < len(args):
        tok = args[i]
        i += 1
        if tok in tool.value_options:
            i += 1
        elif tok == "--" or len(tok) < 2 or tok[0] not in "-+":
            return
        elif tok[0] == "-" and tok[1] != "-" and "c" in tok:
            if i < len(args):
                label = f"{_canonical_name(args[0])} -c"
                classify_shell_string(walker, call, args[i], label)
            return


def classify_shell_string(walker: _Walker, call: _Call, script: str, label: str) -> None:
    cwd = call.cwd
    exported = call.env         # A=B alone or `export A=B`: for the commands after it
    for words, redirects in _split_shell(script[:MAX_TEXT]):
        if walker.steps <= 0:
            return walker.opaque(replace(call, argv=[label.split()[0]]), "budget")
        original = words
        words = _strip_shell_keywords(words)
        prefix = original[:len(original) - len(words)] if words else original
        assigned = _config_assignments([w for w in prefix if _ASSIGNMENT.match(w)])
        if words[:1] == ["export"]:
            assigned += _config_assignments(words[1:])
        if not words or words[0] == "export":
            exported += assigned
            assigned = ()
        inner_call = _Call(words, cwd, call.via + (label,), call.depth + 1, call.extra, call.implicit,
                           exported + assigned)
        for path in redirects:
            walker.emit(inner_call, "file.write", _resolve(path, cwd), {"redirect": True})
        if not words:
            continue
        if words[0] == "cd":
            cwd = _shell_cd(words, cwd)
            continue
        walker.run(inner_call)


def _shell_cd(words: list[str], cwd: str | None) -> str | None:
    """Follow `cd DIR` so that later relative paths resolve; unknowable targets forget the cwd."""
    dest = next((w for w in words[1:] if not w.startswith("-") or w == "-"), None)
    if dest is None or dest == "-" or dest.startswith(("~", "$")):
        return None
    if not dest.startswith("/") and not cwd:
        return None
    return _resolve(dest, cwd)


_SHELL_KEYWORDS = frozenset({"{", "}", "!", "then", "do", "else", "elif", "if", "while", "until",
                             "time", "coproc"})
_SHELL_SKIP = frozenset({"fi", "done", "esac", "for", "case", "select", "function", "in"})


def _strip_shell_keywords(words: list[str]) -> list[str]:
    i = 0
    while i < len(words) and (words[i] in _SHELL_KEYWORDS or _ASSIGNMENT.match(words[i])):
        i += 1
    if i < len(words) and words[i] in _SHELL_SKIP:
        return []
    return words[i:]


class _Op(str):
    """A shell operator token, kept apart from a quoted word with the same spelling."""


_SEPARATORS = frozenset({";", "&&", "||", "|", "|&", "&", "(", ")", "\n", "`", ";;", "$("})
_WRITE_REDIRECTS = frozenset({">", ">>", ">|", "&>", "&>>"})
_REDIRECTS = _WRITE_REDIRECTS | {"<", "<<", "<<<", "<&", ">&", "<>"}
_OP_SPELLINGS = sorted(_SEPARATORS | _REDIRECTS, key=len, reverse=True)


def _tokenize_shell(script: str) -> list[str]:
    """A small POSIX-ish tokenizer: quotes, backslashes, comments, operators.

    Limits (it is a classifier, not a shell): no parameter/arithmetic expansion, aliases,
    functions, heredoc bodies (their lines are read as commands), or $(...) inside double
    quotes; $(...) and backticks elsewhere are treated as command separators so their
    contents are classified as commands of their own.
    """
    tokens: list[str] = []
    word: list[str] = []
    in_word = quoted = False
    i, n = 0, len(script)

    def flush() -> None:
        nonlocal in_word, quoted
        if in_word:
            tokens.append("".join(word))
        word.clear()
        in_word = quoted = False

    while i < n:
        c = script[i]
        if c in " \t\r":
            flush()
            i += 1
        elif c == "\\":
            if i + 1 < n and script[i + 1] != "\n":
                word.append(script[i + 1])
                in_word = True
            i += 2
        elif c == "'":
            end = script.find("'", i + 1)
            end = n if end < 0 else end
            word.append(script[i + 1:end])
            in_word = quoted = True
            i = end + 1
        elif c == '"':
            i = _read_double_quoted(script, i + 1, word)
            in_word = quoted = True
        elif c == "#" and not in_word:
            end = script.find("\n", i)
            i = n if end < 0 else end
        elif c in ";&|()<>\n`" or script.startswith("$(", i):
            if c in "<>" and in_word and not quoted and "".join(word).isdigit():
                word.clear()
                in_word = False        # "2>file": the fd number is not an argument
            flush()
            op = next(o for o in _OP_SPELLINGS if script.startswith(o, i))
            tokens.append(_Op(op))
            i += len(op)
        else:
            word.append(c)
            in_word = True
            i += 1
    flush()
    return tokens


def _read_double_quoted(script: str, i: int, word: list[str]) -> int:
    n = len(script)
    while i < n:
        c = script[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and script[i + 1] in '\\"$`\n':
            if script[i + 1] != "\n":
                word.append(script[i + 1])
            i += 2
            continue
        word.append(c)
        i += 1
    return n


def _split_shell(script: str) -> list[tuple[list[str], list[str]]]:
    """Simple commands as (words, files written by redirection)."""
    commands: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    writes: list[str] = []
    tokens = _tokenize_shell(script)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if isinstance(tok, _Op) and tok in _SEPARATORS:
            if words or writes:
                commands.append((words, writes))
            words, writes = [], []
        elif isinstance(tok, _Op):
            target = tokens[i] if i < len(tokens) and not isinstance(tokens[i], _Op) else None
            i += target is not None
            if tok in _WRITE_REDIRECTS and target and not target.startswith(("/dev/", "&")):
                writes.append(target)
        else:
            words.append(tok)
    if words or writes:
        commands.append((words, writes))
    return commands


def _split_words(text: str) -> list[str]:
    return [t for t in _tokenize_shell(text[:MAX_TEXT]) if not isinstance(t, _Op)]


def _canonical_name(word: str) -> str:
    name = _tool_name(word)
    match = _VERSION_SUFFIX.match(name)
    return match.group(1) if match and not name.startswith("ld") else name


# -- interpreters (heuristic: a regex scan for obvious calls with literal arguments)

_STR = r"""(?:'((?:\\.|[^'\\])*)'|"((?:\\.|[^"\\])*)"|`((?:\\.|[^`\\])*)`)"""
_ESCAPE = re.compile(r"\\(.)", re.S)
_PY_RMTREE = re.compile(r"\b(?:shutil\.)?rmtree\(\s*(?:" + _STR + ")?")
_PY_REMOVE = re.compile(r"\bos\.(?:remove|unlink|rmdir|removedirs)\(\s*(?:" + _STR + ")?")
_PY_SHELL = re.compile(r"\b(os\.system|os\.popen|subprocess\.\w+|commands\.getoutput)\(\s*" + _STR)
_PY_ARGV = re.compile(r"\b(subprocess\.\w+|os\.exec\w+|os\.spawn\w+)\(\s*\[([^\]]*)\]")
_JS_SHELL = re.compile(r"\b(exec|execSync)\(\s*" + _STR)
_JS_ARGV = re.compile(r"\b(spawn|spawnSync|execFile|execFileSync)\(\s*" + _STR + r"\s*(?:,\s*\[([^\]]*)\])?")
_JS_REMOVE = re.compile(r"\b(?:fs|fsp|promises)\.(?:rmSync|rm|rmdirSync|rmdir|unlinkSync|unlink)\(\s*(?:" + _STR + ")?")
_STRING_LITERAL = re.compile(_STR)
_RECURSIVE_OPT = re.compile(r"recursive\s*:\s*true")


def _literal(match: re.Match, first_group: int) -> str | None:
    for g in range(first_group, first_group + 3):
        value = match.group(g)
        if value is not None:
            return _ESCAPE.sub(lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), value)
    return None


def _literal_list(text: str) -> list[str]:
    return [_literal(m, 1) or "" for m in _STRING_LITERAL.finditer(text)]


def _emit_delete(walker: _Walker, call: _Call, match: re.Match, recursive: bool) -> None:
    path = _literal(match, 1)
    params: dict[str, object] = {"recursive": recursive}
    if path is None:
        params["dynamic"] = True
    walker.emit(call, "file.delete", _resolve(path, call.cwd) if path is not None else DYNAMIC_TARGET, params)


def _scan_code_shell(walker: _Walker, call: _Call, code: str, shell_re: re.Pattern,
                     argv_re: re.Pattern, label_prefix: str) -> None:
    """Command strings go through the shell tokenizer; literal argv lists are classified as-is."""
    for m in shell_re.finditer(code):
        classify_shell_string(walker, call, _literal(m, 2) or "", label_prefix + m.group(1))
    for m in argv_re.finditer(code):
        if label_prefix:       # node: spawn("git", ["push", "-f"])
            argv = [_literal(m, 2) or ""] + _literal_list(m.group(5) or "")
        else:                  # python: subprocess.run(["git", "push", "-f"])
            argv = _literal_list(m.group(2))
        if argv:
            walker.inner(call, argv, label_prefix + m.group(1))


def _scan_python(walker: _Walker, call: _Call, code: str) -> None:
    code = code[:MAX_TEXT]
    for m in _PY_RMTREE.finditer(code):
        _emit_delete(walker, call, m, True)
    for m in _PY_REMOVE.finditer(code):
        _emit_delete(walker, call, m, False)
    _scan_code_shell(walker, call, code, _PY_SHELL, _PY_ARGV, "")


def _scan_node(walker: _Walker, call: _Call, code: str) -> None:
    code = code[:MAX_TEXT]
    for m in _JS_REMOVE.finditer(code):
        _emit_delete(walker, call, m, bool(_RECURSIVE_OPT.search(code, m.end(), m.end() + 200)))
    _scan_code_shell(walker, call, code, _JS_SHELL, _JS_ARGV, "child_process.")


def _launch_python(walker: _Walker, call: _Call, tool: _Tool) -> None:
    args = call.argv
    i = 1
    while i < len(args):
        tok = args[i]
        i += 1
        if tok in tool.value_options:
            i += 1
            continue
        if len(tok) < 2 or tok[0] != "-" or tok.startswith("--"):
            return                              # a script (or --help): nothing we can read
        for k, ch in enumerate(tok[1:], start=2):
            if ch in "cm":
                rest = tok[k:] or (args[i] if i < len(args) else "")
                if ch == "c":
                    code_call = replace(call, via=call.via + ("python -c",), depth=call.depth + 1)
                    _scan_python(walker, code_call, rest)
                else:
                    after = i + (0 if tok[k:] else 1)
                    walker.inner(call, [rest] + list(args[after:]), "python -m")
                return
            if f"-{ch}" in tool.value_options:
                i += 0 if tok[k:] else 1
                break


def _launch_node(walker: _Walker, call: _Call, tool: _Tool) -> None:
    args = call.argv
    i = 1
    while i < len(args):
        tok = args[i]
        i += 1
        name, eq, val = tok.partition("=")
        if name in ("-e", "--eval", "-p", "--print"):
            code = val if eq else (args[i] if i < len(args) else "")
            code_call = replace(call, via=call.via + ("node -e",), depth=call.depth + 1)
            return _scan_node(walker, code_call, code)
        if name in tool.value_options and not eq:
            i += 1
        elif not tok.startswith("-"):
            return


_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
_FIND_GLOBAL = frozenset({"-H", "-L", "-P"})


def _launch_find(walker: _Walker, call: _Call, tool: _Tool) -> None:
    """find -delete deletes under each start path; -exec CMD {} ; runs CMD on what it found."""
    args = call.argv
    i = 1
    while i < len(args) and (args[i] in _FIND_GLOBAL or args[i].startswith(("-D", "-O"))):
        i += 2 if args[i] == "-D" else 1
    starts = []
    while i < len(args) and not args[i].startswith(("-", "(", "!")):
        starts.append(args[i])
        i += 1
    starts = starts or ["."]
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "-delete":
            for start in starts:
                walker.emit(call, "file.delete", _resolve(start, call.cwd), {"recursive": True, "find": True})
        elif tok in _FIND_EXEC:
            end = i
            while end < len(args) and args[end] not in (";", "+"):
                end += 1
            inner: list[str] = []
            for word in args[i:end]:
                inner.extend(starts if word == "{}" else [word.replace("{}", starts[0])])
            walker.inner(call, inner, "find " + tok, extra=(("recursive", True), ("find", True)))
            i = end + 1


LAUNCHERS: dict[str, Callable[[_Walker, _Call, _Tool], None]] = {
    "prefix": _launch_prefix, "shell": _launch_shell, "python": _launch_python,
    "node": _launch_node, "find": _launch_find,
}

# --------------------------------------------------------------------------- named parsers

_GIT_PUSH_FORCE = frozenset({"-f", "--force", "--force-with-lease", "--force-if-includes", "--mirror"})
# the long options the named parsers read (for prefix spellings: _expand_long_flags)
PARSER_OPTIONS: dict[str, frozenset[str]] = {
    "git_push": _GIT_PUSH_FORCE | {"--delete", "--all", "--tags", "--prune", "--repo"},
}


_UNKNOWN_CONFIG = "?"        # configuration whose content the classifier cannot know


def _config_assignments(words: list[str]) -> tuple[tuple[str, str], ...]:
    """The GIT_CONFIG* assignments among leading NAME=VALUE words."""
    out: list[tuple[str, str]] = []
    for w in words:
        if not _ASSIGNMENT.match(w):
            break
        name, _eq, value = w.partition("=")
        if name.startswith("GIT_CONFIG"):
            out.append((name, value))
    return tuple(out)


# (key, value - None when given without '=' -, value known)
ConfigItem = tuple[str, "str | None", bool]


def _git_env_config(walker: _Walker, call: _Call) -> list[ConfigItem]:
    """Configuration git takes from its environment: GIT_CONFIG_COUNT with
    GIT_CONFIG_KEY_n/GIT_CONFIG_VALUE_n, GIT_CONFIG_PARAMETERS (what `git -c` passes to its
    children), and GIT_CONFIG_GLOBAL/GIT_CONFIG_SYSTEM files, whose content is unknown here
    (an unknown key). Parsed once per environment a walk meets."""
    cached = walker.config_items.get(call.env)
    if cached is None:
        cached = walker.config_items[call.env] = _env_config_items(walker, call)
    return cached


def _env_config_items(walker: _Walker, call: _Call) -> list[ConfigItem]:
    env = dict(walker.process_config_env())
    env.update(call.env)
    unknown: ConfigItem = (_UNKNOWN_CONFIG, None, False)
    items: list[ConfigItem] = []
    if _UNKNOWN_CONFIG in env:
        items.append(unknown)
    if "GIT_CONFIG_COUNT" in env:
        try:
            count = int(env["GIT_CONFIG_COUNT"])
        except ValueError:
            count = -1
        if not 0 <= count <= 1000:
            items.append(unknown)
        for i in range(max(0, min(count, 1000))):
            key, value = env.get(f"GIT_CONFIG_KEY_{i}"), env.get(f"GIT_CONFIG_VALUE_{i}")
            if key is not None:
                items.append((key, value, value is not None))
    params = env.get("GIT_CONFIG_PARAMETERS")
    if params:
        parsed = _parse_config_parameters(params)
        items += parsed if parsed is not None else [unknown]
    for name in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM"):
        if env.get(name) not in (None, "", "/dev/null"):
            items.append(unknown)
    return items


def _parse_config_parameters(text: str) -> list[ConfigItem] | None:
    """GIT_CONFIG_PARAMETERS as git reads it: entries separated by spaces, 'key'='value'
    ('key'= for a key without value) or the older 'key=value' (split at its first '=', as
    git does), each part single-quoted with ' written '\\'' and ! written '\\!'. None when
    it does not parse (git refuses it too)."""
    n = len(text)

    def quoted(i: int) -> tuple[str, int] | None:
        if i >= n or text[i] != "'":
            return None
        out, i = [], i + 1
        while True:
            j = text.find("'", i)
            if j < 0:
                return None
            out.append(text[i:j])
            i = j + 1
            if text.startswith("\\''", i) or text.startswith("\\!'", i):
                out.append(text[i + 1])
                i += 3
            else:
                return "".join(out), i

    items: list[ConfigItem] = []
    i = 0
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        got = quoted(i)
        if got is None:
            return None
        key, i = got
        if i < n and text[i] == "=":
            got = quoted(i + 1) if i + 1 < n and text[i + 1] == "'" else None
            value, i = got if got is not None else (None, i + 1)
            items.append((key, value, True))
        else:
            k, eq, v = key.partition("=")
            items.append((k.strip(" \t\n\r"), v if eq else None, True))   # (git trims it)
    return items


def _cli_config(parsed: _Args) -> list[ConfigItem]:
    """`git -c key[=value]` (split at the first '=', as git does) and `--config-env
    key=ENV` (split at the last; the value is the environment's, unknown here)."""
    items: list[ConfigItem] = []
    for item in parsed.values.get("-c", []):
        k, eq, v = item.partition("=")
        items.append((k, v if eq else None, True))
    for item in parsed.values.get("--config-env", []):
        items.append((item.rpartition("=")[0] or item, None, False))
    return items


_GIT_INT = re.compile(r"\s*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)[kKmMgG]?")


def _git_bool(value: str | None) -> bool | None:
    """A boolean as git reads one: a key without '=' is true, '' false, true/yes/on and
    false/no/off in any case, else an integer (C syntax, optional k/m/g) that is true when
    not zero. None: git refuses the value."""
    if value is None:
        return True
    v = value.lower()
    if v in ("true", "yes", "on"):
        return True
    if v in ("false", "no", "off", ""):
        return False
    m = _GIT_INT.fullmatch(value)
    if not m:
        return None
    digits = m.group(1).lower()
    base = 16 if digits.startswith("0x") else 8 if digits.startswith("0") else 10
    return int(digits, base) != 0


def _git_config_implies(parsed: _Args, env_items: Callable[[], list[ConfigItem]]) -> None:
    """`git -c` / `--config-env` and the same configuration given through the environment
    (`env_items`, read only for the subcommands below): configuration that changes what the
    subcommand does. For push and send-pack, a refspec with '+' or mirror mode forces; for
    clean, requireForce off is an implied -f. Configuration whose content is unknown (a
    config file named in the environment or included, an unreadable environment, a value
    from elsewhere) may do either. Nothing else."""
    sub = parsed.positionals[0] if parsed.positionals else ""
    if sub not in ("push", "send-pack", "clean"):
        return
    for key, value, known in env_items() + _cli_config(parsed):
        k = key.lower()
        if k == _UNKNOWN_CONFIG or k == "include.path" or \
                (k.startswith("includeif.") and k.endswith(".path")):
            parsed.flags.add("--force")
        elif sub in ("push", "send-pack") and k.startswith("remote."):
            if (k.endswith(".mirror") and (not known or _git_bool(value) is not False)) or \
                    (k.endswith(".push") and (not known or value is None or "+" in value)):
                parsed.flags.add("--force")
        elif sub == "clean" and k == "clean.requireforce" and \
                (not known or _git_bool(value) is not True):
            parsed.flags.add("--force")


# git's own commands: an alias of the same name never replaces one
_GIT_BUILTINS = frozenset("""add am annotate apply archive bisect blame branch bundle cat-file
check-attr check-ignore checkout checkout-index cherry cherry-pick citool clean clone column commit
commit-tree config count-objects describe diff diff-files diff-index diff-tree difftool fast-export
fast-import fetch fetch-pack filter-branch for-each-ref format-patch fsck gc grep hash-object help
index-pack init instaweb interpret-trailers log ls-files ls-remote ls-tree mailinfo maintenance
merge merge-base mergetool mktag mktree mv name-rev notes pack-objects prune pull push
range-diff read-tree rebase receive-pack reflog remote repack replace request-pull rerere reset
restore rev-list rev-parse revert rm send-email send-pack shortlog show show-branch show-ref
sparse-checkout stash status stripspace submodule switch symbolic-ref tag update-index
update-ref var verify-commit verify-pack verify-tag version whatchanged worktree
write-tree""".split())


def _git_alias(walker: _Walker, call: _Call, parsed: _Args) -> bool:
    """`git NAME` where NAME is an alias given by -c or the environment (alias.NAME):
    classified as what it runs - the expansion with the rest of the arguments, or its
    shell command ('!...'). True when it was one."""
    sub = parsed.positionals[0] if parsed.positionals else ""
    if not sub or sub in _GIT_BUILTINS or sub.startswith("-"):
        return False
    want = f"alias.{sub.lower()}"
    value, found, unknown_value, autocorrect = None, False, False, None
    for key, v, known in _git_env_config(walker, call) + _cli_config(parsed):
        k = key.lower()
        if k == want:
            value, found, unknown_value = v, True, not known
        elif k == "help.autocorrect":
            autocorrect = v if known else _UNKNOWN_CONFIG
    if found and (unknown_value or value is None):
        walker.opaque(call, "alias")            # (--config-env: what it runs is unknown here)
        return True
    if not found:
        if autocorrect is not None and autocorrect.lower() not in ("0", "never", "show", "false",
                                                                   "no", "off", ""):
            # git runs the command it guesses the name was meant to be, in-process
            walker.opaque(call, "autocorrect")
            return True
        return False
    argv = call.argv
    i = parsed.first_at + 1             # the subcommand's place in argv (parsed: argv[1:])
    rest = argv[i + 1:]
    if value.startswith("!"):
        script = " ".join([value[1:]] + [shlex.quote(a) for a in rest])
        classify_shell_string(walker, call, script, "git alias")
        return True
    try:
        words = shlex.split(value)
    except ValueError:
        walker.opaque(call, "alias")
        return True
    walker.inner(call, list(argv[:i]) + words + list(rest), "git alias")
    return True


def _parse_git_push(walker: _Walker, call: _Call, parsed: _Args, operands: list[str]) -> None:
    """vcs.push / vcs.push.force / vcs.push.delete, one per refspec (target remote/ref)."""
    forced = not _GIT_PUSH_FORCE.isdisjoint(parsed.flags)
    deleting = "-d" in parsed.flags or "--delete" in parsed.flags
    remote = parsed.value(("--repo",)) or (operands[0] if operands else "")
    refspecs = operands[1:] if operands and not parsed.value(("--repo",)) else operands
    base = {"force": forced, "remote": remote}
    if parsed.flags & {"--all", "--mirror", "--tags"}:
        base["all"] = True
    if "--prune" in parsed.flags:       # deletes remote refs the local side lacks
        walker.emit(call, "vcs.push.delete", remote or DEFAULT_REMOTE, {**base, "all": True})
    if not refspecs:
        kind = "vcs.push.force" if forced else "vcs.push"
        return walker.emit(call, kind, remote or DEFAULT_REMOTE, base)
    for spec in refspecs:
        plus = spec.startswith("+")
        src, colon, dst = spec.lstrip("+").partition(":")
        ref = dst if colon else src
        if deleting or (colon and not src):
            kind = "vcs.push.delete"
        elif forced or plus:
            kind = "vcs.push.force"
        else:
            kind = "vcs.push"
        params = {**base, "force": forced or plus, "refspec": spec}
        walker.emit(call, kind, f"{remote or DEFAULT_REMOTE}/{ref}", params)


_CURL_VALUE = frozenset("""-X --request -d --data --data-raw --data-binary --data-ascii --data-urlencode
--json -F --form --form-string -T --upload-file -H --header -o --output -u --user -A --user-agent
-e --referer -b --cookie -c --cookie-jar --url -x --proxy -K --config -w --write-out -m --max-time
--connect-timeout --retry --cacert --capath --cert -E --key --resolve -r --range -C
--continue-at -y -Y -z --time-cond --limit-rate --max-filesize --proto --proxy-user -U
--oauth2-bearer --unix-socket --interface --dns-servers --retry-delay --retry-max-time
--connect-to --output-dir --aws-sigv4 --variable --expand-url""".split())
_CURL_DATA = ("-d", "--data", "--data-raw", "--data-binary", "--data-ascii", "--data-urlencode", "--json")
_CURL_FORM = ("-F", "--form", "--form-string")


def _parse_curl(walker: _Walker, call: _Call, _: _Args, __: list[str]) -> None:
    parsed = _parse_args(call.argv[1:], _CURL_VALUE)
    has_data = any(o in parsed.values for o in _CURL_DATA + _CURL_FORM)
    method = parsed.value(("-X", "--request"))
    if method is None:
        if "-I" in parsed.flags or "--head" in parsed.flags:
            method = "HEAD"
        elif "-G" in parsed.flags or "--get" in parsed.flags:
            method = "GET"
        elif "-T" in parsed.values or "--upload-file" in parsed.values:
            method = "PUT"
        else:
            method = "POST" if has_data else "GET"
    urls = parsed.positionals + parsed.values.get("--url", [])
    params: dict[str, object] = {"method": method.upper(), "data": has_data}
    upload = parsed.value(("-T", "--upload-file"))
    if upload:
        params["upload"] = _resolve(upload, call.cwd)
    _emit_urls(walker, call, urls, params)


def _emit_urls(walker: _Walker, call: _Call, urls: list[str], params: dict[str, object]) -> None:
    if not urls and call.implicit:
        urls = [STDIN_TARGET]
    for url in urls:
        walker.emit(call, "net.http", url, params)


_WGET_VALUE = frozenset("""-O --output-document -o --output-file -a --append-output -P --directory-prefix
-t --tries -T --timeout -U --user-agent --header -e --execute -i --input-file --user --password
--http-user --http-password --post-data --post-file --body-data --body-file --method -w --wait
--limit-rate -Q --quota -l --level -A --accept -R --reject -D --domains --load-cookies
--save-cookies --referer --ca-certificate --certificate --private-key""".split())


def _parse_wget(walker: _Walker, call: _Call, _: _Args, __: list[str]) -> None:
    parsed = _parse_args(call.argv[1:], _WGET_VALUE)
    has_data = any(o in parsed.values for o in ("--post-data", "--post-file", "--body-data", "--body-file"))
    method = parsed.value(("--method",))
    if method is None:
        method = "POST" if has_data else ("HEAD" if "--spider" in parsed.flags else "GET")
    _emit_urls(walker, call, parsed.positionals, {"method": method.upper(), "data": has_data})


_HTTPIE_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_HTTPIE_ITEM = re.compile(r"^[^=:]*(?::=@?|=@?|@)")


def _parse_httpie(walker: _Walker, call: _Call, parsed: _Args, operands: list[str]) -> None:
    """http [METHOD] URL [ITEM...]: data items (a=b, a:=1, @file) imply POST."""
    pos = list(operands)
    method = pos.pop(0).upper() if pos and pos[0].upper() in _HTTPIE_METHODS else None
    url = pos.pop(0) if pos else None
    has_data = any(_HTTPIE_ITEM.match(p) and "==" not in p for p in pos)
    params = {"method": method or ("POST" if has_data else "GET"), "data": has_data}
    _emit_urls(walker, call, [url] if url else [], params)


# -- SQL

_SQL_QUERY = frozenset({"SELECT", "SHOW", "EXPLAIN", "DESCRIBE", "DESC", "VALUES", "TABLE", "PRAGMA"})
_SQL_WRITE = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT", "COPY"})
_SQL_DDL = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "GRANT", "REVOKE", "RENAME", "COMMENT"})
_SQL_DESTRUCTIVE = frozenset({"DROP", "TRUNCATE"})


# options with which a SQL client reads no SQL (it lists, or says its version or help)
_SQL_NO_STDIN = frozenset({"-l", "--list", "-V", "--version", "-version", "--help", "-?", "-help"})
_EXPLAIN_ANALYZE = re.compile(r"\s*EXPLAIN\s+(?:\((?P<opts>[^)]*)\)\s*|(?P<an>ANALY[SZ]E)\s+)(?:VERBOSE\s+)?",
                              re.I)
_CTE_WRITE = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def classify_sql(walker: _Walker, call: _Call, sql: str, database: str | None = None,
                 backslash_escapes: bool = True) -> None:
    """One action per statement; sqlparse does the splitting and the statement typing.
    sqlparse reads '\\'' inside a string as an escaped quote (MySQL); where the server
    does not (psql, sqlite3: backslash_escapes False; PostgreSQL's E'' strings do), the
    text is also classified with every backslash made an ordinary character, so a
    statement hidden behind one is seen either way."""
    seen: set[tuple[str, str]] = set()
    texts = (sql,) if backslash_escapes or "\\" not in sql else (sql, sql.replace("\\", "/"))
    for text in texts:
        for type_, target, params in _sql_actions(text, database):
            if (type_, target) not in seen or text is sql:
                seen.add((type_, target))
                walker.emit(call, type_, target, params)


def _sql_actions(sql: str, database: str | None, depth: int = 0) -> list[tuple[str, str, dict]]:
    out: list[tuple[str, str, dict]] = []
    truncated_input = len(sql) > MAX_TEXT
    for count, stmt in enumerate(sqlparse.parse(sql[:MAX_TEXT])):
        if count >= MAX_SQL_STATEMENTS:
            break
        text = str(stmt).strip().rstrip(";").strip()
        if not text or stmt.token_first(skip_cm=True) is None:
            continue
        kind = stmt.get_type()
        if kind == "UNKNOWN":
            kind = stmt.token_first(skip_cm=True).normalized.upper().split()[0]
        params: dict[str, object] = {"statement": text[:STATEMENT_PARAM_LIMIT]}
        if len(text) > STATEMENT_PARAM_LIMIT or truncated_input:
            params["truncated"] = True
        if database:
            params["database"] = database
        bare = sqlparse.format(text, strip_comments=True).strip()    # (a comment hides nothing)
        m = _EXPLAIN_ANALYZE.match(bare) if kind == "EXPLAIN" and depth < 3 else None
        if m and (m.group("an") or re.search(r"\bANALY[SZ]E\b(?!\s+(?:FALSE|OFF|0)\b)",
                                                m.group("opts") or "", re.I)):
            # EXPLAIN ANALYZE runs the statement it explains
            out.extend(_sql_actions(bare[m.end():], database, depth + 1))
            continue
        if kind in _SQL_QUERY and bare[:4].upper() == "WITH" and _CTE_WRITE.search(bare):
            kind = "WITH"               # a data-modifying CTE: a write under a query
            type_ = "db.write"
        elif kind in _SQL_QUERY:
            type_ = "db.query"
        elif kind in _SQL_WRITE:
            type_ = "db.write"
            if kind in ("DELETE", "UPDATE") and not any(isinstance(t, sqlnodes.Where) for t in stmt.tokens):
                params["unbounded"] = True
        elif kind in _SQL_DDL:
            type_ = "db.ddl"
            if kind in _SQL_DESTRUCTIVE:
                params["destructive"] = True
        elif kind != "WITH":
            type_ = "db.other"
        out.append((type_, f"sql:{kind}", params))
    return out


_PSQL_VALUE = frozenset("""-c --command -f --file -d --dbname -h --host -p --port -U --username
-v --set --variable -o --output -L --log-file -P --pset -F --field-separator -R --record-separator
-T --table-attr""".split())
_PSQL_LONG = frozenset(o for o in _PSQL_VALUE if o.startswith("--")) | frozenset("""--echo-all
--no-align --csv --echo-errors --echo-queries --echo-hidden --html --list --no-readline
--single-transaction --quiet --single-step --single-line --tuples-only --expanded --no-psqlrc
--field-separator-zero --record-separator-zero --no-password --password --version --help""".split())


def _sql_file(walker: _Walker, call: _Call, path: str, database: str | None) -> None:
    params = {"database": database} if database else {}
    walker.emit(call, "db.script", _resolve(path, call.cwd), params)


def _parse_psql(walker: _Walker, call: _Call, _: _Args, __: list[str]) -> None:
    """Each -c is SQL to parse; -f FILE is only named (we do not read the agent's files)."""
    parsed = _parse_args(call.argv[1:], _PSQL_VALUE, all_long=_PSQL_LONG)
    database = parsed.value(("-d", "--dbname")) or (parsed.positionals[0] if parsed.positionals else None)
    commands = parsed.values.get("-c", []) + parsed.values.get("--command", [])
    files = parsed.values.get("-f", []) + parsed.values.get("--file", [])
    for sql in commands:
        include = re.match(r"\s*\\(?:i|ir|include|include_relative)\s+(\S+)", sql)
        if include:                     # \i FILE: a script
            _sql_file(walker, call, include.group(1), database)
        else:
            classify_sql(walker, call, sql, database, backslash_escapes=False)
    for path in files:
        _sql_file(walker, call, path, database)
    if not commands and not files and not parsed.flags & _SQL_NO_STDIN:
        _sql_file(walker, call, STDIN_TARGET, database)     # SQL read from stdin


_MYSQL_VALUE = frozenset("""-e --execute -h --host -u --user -P --port -D --database -S --socket
--defaults-file --defaults-extra-file --default-character-set --protocol""".split())


def _parse_mysql(walker: _Walker, call: _Call, _: _Args, __: list[str]) -> None:
    parsed = _parse_args(call.argv[1:], _MYSQL_VALUE)
    database = parsed.value(("-D", "--database")) or (parsed.positionals[0] if parsed.positionals else None)
    executes = parsed.values.get("-e", []) + parsed.values.get("--execute", [])
    for sql in executes:
        source = re.match(r"\s*(?:source|\\\.)\s+(\S+)", sql, re.I)
        if source:
            _sql_file(walker, call, source.group(1), database)
        else:
            # MySQL runs what /*! ... */ and /*!NNNNN ... */ comments hold
            classify_sql(walker, call, re.sub(r"/\*!\d*|\*/", " ", sql), database)
    if not executes and not parsed.flags & _SQL_NO_STDIN:
        _sql_file(walker, call, STDIN_TARGET, database)     # SQL read from stdin


_SQLITE_VALUE = frozenset({"-cmd", "-separator", "-nullvalue", "-newline", "-init", "-vfs",
                           "-maxsize", "-pagecache", "-lookaside", "-mmap", "-heap", "-escape"})


def _parse_sqlite3(walker: _Walker, call: _Call, _: _Args, __: list[str]) -> None:
    """sqlite3 [OPTIONS] DB [SQL...]; -cmd SQL runs too. Dot-commands are not SQL and are skipped."""
    parsed = _parse_args(call.argv[1:], _SQLITE_VALUE, long_single_dash=True)
    pos = parsed.positionals
    database = _resolve(pos[0], call.cwd) if pos else None
    statements = parsed.values.get("-cmd", []) + pos[1:]
    for sql in statements:
        read = re.match(r"\s*\.read\s+(\S+)", sql)
        if read:                        # .read FILE: a script
            _sql_file(walker, call, read.group(1), database)
        elif not sql.lstrip().startswith("."):
            classify_sql(walker, call, sql, database, backslash_escapes=False)
    for path in parsed.values.get("-init", []):
        _sql_file(walker, call, path, database)
    if not pos[1:] and not parsed.flags & _SQL_NO_STDIN:
        _sql_file(walker, call, STDIN_TARGET, database)     # SQL read from stdin


_Parser = Callable[[_Walker, _Call, _Args, list[str]], None]
PARSERS: dict[str, _Parser] = {
    "git_push": _parse_git_push, "curl": _parse_curl, "wget": _parse_wget, "httpie": _parse_httpie,
    "psql": _parse_psql, "mysql": _parse_mysql, "sqlite3": _parse_sqlite3,
}
# Types the named parsers and launchers can produce (rules declare theirs in the YAML).
PARSER_TYPES: frozenset[str] = frozenset({
    "vcs.push", "vcs.push.force", "vcs.push.delete", "net.http", "db.query", "db.write", "db.ddl",
    "db.other", "db.script", "file.delete", "file.write", "exec.opaque",
})

# --------------------------------------------------------------------------- the catalog


class Catalog:
    """Tool name -> compiled entry. Immutable after load; classify() is thread-safe."""

    def __init__(self, tools: dict[str, _Tool]) -> None:
        self._tools = tools
        self.types: frozenset[str] = PARSER_TYPES | frozenset(
            r.type for t in tools.values() for r in t.rules if r.type)

    @classmethod
    def load(cls, paths: list[str | Path] | None = None) -> "Catalog":
        """The built-in catalog, then each user file in order (later files win per tool)."""
        models: dict[str, _ToolModel] = {}
        for path in [BUILTIN_CATALOG, *(paths or [])]:
            for name, tool in _read_catalog_file(Path(path)).tools.items():
                if tool.extend and name in models:
                    models[name] = _merge_tool(models[name], tool)
                elif tool.extend:
                    raise CatalogError(f"{path}: tools.{name}: extend: true but no such tool to extend")
                else:
                    models[name] = tool
        tools: dict[str, _Tool] = {}
        for name, model in models.items():
            compiled = _Tool.compile(name, model)
            for alias in [name, *model.aliases]:
                tools[alias] = compiled
        return cls(tools)

    def lookup(self, argv0: str, exe: str | None = None) -> _Tool | None:
        """The executable's basename decides, except when it is busybox (then the applet does)."""
        name = _tool_name(exe) if exe else _tool_name(argv0)
        tool = self._tools.get(name) or self._tools.get(_canonical_name(name))
        if exe and tool is not None and tool.name == "busybox":
            applet = _tool_name(argv0)
            if applet and applet != name:
                return self._tools.get(applet) or self._tools.get(_canonical_name(applet))
        return tool

    def classify(self, argv: list[str], exe: str | None = None, cwd: str | None = None,
                 env: Callable[[], dict[str, str]] | None = None) -> list[SemanticAction]:
        """env: returns the GIT_CONFIG* variables of the environment the exec passes on
        (called only when a classification depends on them)."""
        try:
            if not argv:
                return []
            if type(argv) is not list or any(type(a) is not str for a in argv):
                argv = [_as_str(a) for a in argv]
            if self.lookup(argv[0], exe) is None:
                return []
            walker = _Walker(self, env)
            root = _Call(argv, cwd if isinstance(cwd, str) else None, (), 0, (), False)
            try:
                walker.run(root, exe)
            except Exception:  # never raise on the decision path; keep what we found, and
                # say that the rest is unknown (a policy may refuse what it cannot see)
                walker.opaque(root, "classifier-error")
            return _finish(walker)
        except Exception:
            return []


def _finish(walker: _Walker) -> list[SemanticAction]:
    actions = walker.actions
    if walker.truncated and actions:
        last = actions[-1]
        actions[-1] = replace(last, params=last.params + (("truncated_actions", True),))
    return actions


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return os.fsdecode(bytes(value))
    return str(value)


def _read_catalog_file(path: Path) -> _CatalogModel:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: cannot read catalog: {exc}") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: a catalog is a mapping with `tools:`")
    try:
        return _CatalogModel.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise CatalogError(f"{path}: {problems}") from exc


def _builtin_types() -> frozenset[str]:
    try:
        return Catalog.load().types
    except CatalogError:
        return PARSER_TYPES


SEMANTIC_TYPES: frozenset[str] = _builtin_types()
