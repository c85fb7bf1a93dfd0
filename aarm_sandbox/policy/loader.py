"""Load a profile (built-in name or YAML file), resolve `extends`, report errors by line.

A user who mistypes a field gets `file:line: rules[2].decison: unknown field (allowed: ...)`
and exit status 125, never a traceback.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

from aarm_sandbox.records import FrozenRecord

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "profiles_builtin"


class ProfileError(Exception):
    """A profile cannot be used; the message names file, line, field and the fix."""


class LoadedProfile(FrozenRecord):
    __slots__ = ("profile", "source", "sha256", "files")

    def __init__(self, profile: SimpleNamespace, source: str, sha256: str,
                 files: tuple[str, ...] = ()):
        setattr_ = object.__setattr__
        setattr_(self, "profile", profile)  # validated profile as plain attributes (see to_view)
        setattr_(self, "source", source)    # file path
        setattr_(self, "sha256", sha256)    # of the file bytes as loaded (the leaf file)
        setattr_(self, "files", files)      # resolved paths of every file of the extends chain


def to_view(data: dict) -> SimpleNamespace:
    """A validated profile (model_dump) as plain attribute objects: what the compiler and
    engine read. Building it from the cache needs no pydantic at all."""
    return SimpleNamespace(
        id=data["id"], version=data["version"], description=data["description"],
        extends=data["extends"], settings=SimpleNamespace(**data["settings"]),
        path_sets=dict(data["path_sets"]), defaults=dict(data["defaults"]),
        data_classes=dict(data.get("data_classes") or {}),
        destination_sets=dict(data.get("destination_sets") or {}),
        rules=[SimpleNamespace(**r) for r in data["rules"]])


def view_to_dict(view: SimpleNamespace) -> dict:
    d = dict(vars(view))
    d["settings"] = dict(vars(view.settings))
    d["rules"] = [dict(vars(r)) for r in view.rules]
    return d


def builtin_dir() -> Path:
    # Installed: aarm_sandbox/profiles_builtin (package data); source tree: ./profiles.
    if BUILTIN_DIR.is_dir():
        return BUILTIN_DIR
    return Path(__file__).resolve().parents[2] / "profiles"


NOT_PROFILES = {"exec-catalog"}     # other data kept beside the profiles


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml") if p.stem not in NOT_PROFILES)


MAX_EXTENDS = 32


def locate(name_or_file: str) -> Path:
    p = Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_file:
        if not p.is_file():
            raise ProfileError(f"profile file {name_or_file} not found")
        return p
    cand = builtin_dir() / f"{name_or_file}.yaml"
    if not cand.is_file():
        raise ProfileError(f"unknown profile {name_or_file!r}; built-in profiles: "
                           f"{', '.join(builtin_names())} (or give a path to a .yaml file)")
    return cand


def _parse_with_lines(text: str, source: str) -> tuple[object, dict[tuple, int]]:
    import yaml
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ProfileError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None

    def walk(n, loc: tuple):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = k.value
                lines[loc + (key,)] = k.start_mark.line + 1
                walk(v, loc + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[loc + (i,)] = v.start_mark.line + 1
                walk(v, loc + (i,))
    try:
        if node is not None:
            walk(node, ())
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except (TypeError, yaml.YAMLError) as e:       # e.g. a list as a mapping key
        raise ProfileError(f"{source}: not a usable YAML mapping: {e}") from None
    return data, lines


def _allowed_fields(loc: tuple) -> str:
    from aarm_sandbox.policy.schema import Profile, Rule, Settings
    model = Profile
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        if part == "rules":
            model = Rule
        elif part == "settings":
            model = Settings
    names = [f.alias or n for n, f in model.model_fields.items()]
    return ", ".join(names)


def _format_errors(err, source: str, lines: dict[tuple, int]) -> str:
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        line = None
        for i in range(len(loc), 0, -1):
            line = lines.get(loc[:i])
            if line:
                break
        field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if j else str(p))
                        for j, p in enumerate(loc)) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = f"unknown field; allowed here: {_allowed_fields(loc)}"
        else:
            msg = e["msg"]
        out.append(f"{source}:{line or 1}: {field}: {msg}")
    return "\n".join(out)


def _read(path: Path) -> tuple[bytes, dict]:
    import yaml
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ProfileError(f"{path}: cannot read the profile: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        data, _ = _parse_with_lines(text, str(path))     # raises with the line
    if not isinstance(data, dict):
        raise ProfileError(f"{path}:1: a profile is a mapping with at least `id:`")
    return raw, data


def _validate(path: Path, data: dict):
    from pydantic import ValidationError

    from aarm_sandbox.policy.schema import Profile
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        _, lines = _parse_with_lines(path.read_text("utf-8"), str(path))
        raise ProfileError(_format_errors(e, str(path), lines)) from None


def _cache_dir() -> Path:
    from aarm_sandbox.xdg import cache_dir
    return cache_dir() / "profiles"


def load_profile(name_or_file: str, use_cache: bool = True) -> LoadedProfile:
    """Load, resolve `extends`, validate. A profile chain already validated (same bytes of
    every file in the chain, same code version) comes from a per-user cache, so `run`
    starts without parsing YAML or importing pydantic."""
    path = locate(name_or_file)
    leaf_raw = path.read_bytes()
    leaf_sha = hashlib.sha256(leaf_raw).hexdigest()
    # Keyed by where the leaf is too: the same bytes elsewhere may extend other files, and
    # the chain's files are what the session may not change (LoadedProfile.files). An entry
    # whose chain used a relative `extends` path (resolved from the cwd) holds only there.
    key = "\0".join((_CODE_VERSION, str(path.resolve()), leaf_sha))
    cached = _cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    if use_cache:
        hit = _from_cache(cached)
        if hit is not None:
            return LoadedProfile(hit[0], str(path), leaf_sha, hit[1])
    chain: list[tuple[Path, bytes, dict]] = []
    seen: set[str] = set()          # resolved files and ids of the profiles read so far
    while True:
        raw, data = _read(path)
        chain.append((path, raw, data))
        seen.update((str(path.resolve()), str(data.get("id"))))
        ext = data.get("extends")
        if not ext:
            break
        nxt = locate(ext)
        if ext in seen or str(nxt.resolve()) in seen or len(chain) >= MAX_EXTENDS:
            names = " -> ".join(str(p) for p, _r, _d in chain) + f" -> {ext}"
            raise ProfileError(f"{path}: `extends` cycle ({names})" if len(chain) < MAX_EXTENDS
                               else f"{path}: `extends` chain longer than {MAX_EXTENDS} profiles")
        path = nxt
    view = _validate_chain(chain)
    files = [(str(p.resolve()), hashlib.sha256(raw).hexdigest()) for p, raw, _ in chain]
    relative = any(_is_path(d.get("extends")) and not os.path.isabs(d["extends"])
                   for _p, _r, d in chain)
    _store(cached, view, files, os.getcwd() if relative else None)
    return LoadedProfile(view, str(chain[0][0]), leaf_sha, tuple(f for f, _ in files))


def _from_cache(cached: Path) -> tuple[SimpleNamespace, tuple[str, ...]] | None:
    """The cached validated view and its chain's files, if every file of the chain still
    has the same bytes."""
    try:
        entry = json.loads(cached.read_text())
        if entry.get("cwd") not in (None, os.getcwd()):
            return None
        for fpath, sha in entry["chain"]:
            with open(fpath, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != sha:
                    return None
        return to_view(entry["profile"]), tuple(str(f) for f, _ in entry["chain"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _validate_chain(chain) -> SimpleNamespace:
    merged = None
    for path, _raw, data in reversed(chain):
        prof = _validate(path, data)
        merged = prof if merged is None else _merge(merged, prof, data)
    _check_set_names(chain, merged)
    return to_view(merged.model_dump(by_alias=False))


_GLOB_CHARS = frozenset("*?[")


def _check_set_names(chain, merged) -> None:
    """A rule's path entry is a path set of the (merged) profile or a path pattern. A bare
    word that is neither (`paths: [secret]` for the set `secrets`) could never match a
    path, and would silently switch its rule off: refused, naming file, line and the sets."""
    sets = set(merged.path_sets)
    for rule in merged.rules:
        for field, items in (("paths", rule.paths), ("outside", rule.outside),
                             ("except", rule.except_paths)):
            for j, item in enumerate(items):
                if item in sets or "/" in item or item.startswith("{") or _GLOB_CHARS & set(item):
                    continue
                where = _rule_source(chain, rule.id, field, j)
                raise ProfileError(
                    f"{where}: rules[{rule.id}].{field}: {item!r} is neither a path set of this "
                    f"profile nor a path pattern (an absolute path, {{workspace}}/..., or a "
                    f"glob); the path sets are: {', '.join(sorted(sets)) or '(none)'}")


def _rule_source(chain, rule_id: str, field: str, j: int) -> str:
    for path, raw, data in chain:                        # the leaf first: it overrides
        for i, r in enumerate(data.get("rules") or []):
            if isinstance(r, dict) and r.get("id") == rule_id and field in r:
                try:
                    _, lines = _parse_with_lines(raw.decode("utf-8"), str(path))
                except ProfileError:
                    return str(path)
                return f"{path}:{lines.get(('rules', i, field, j)) or lines.get(('rules', i)) or 1}"
    return str(chain[0][0])


def _is_path(name) -> bool:
    """An `extends`/--profile value naming a file (as `locate` reads it), not a built-in."""
    return isinstance(name, str) and (name.endswith((".yaml", ".yml")) or "/" in name)


def _store(cached: Path, view: SimpleNamespace, chain: list[tuple[str, str]],
           cwd: str | None) -> None:
    try:
        cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"chain": chain, "profile": view_to_dict(view), "cwd": cwd}))
        os.replace(tmp, cached)
    except OSError:
        pass      # a cache that cannot be written only costs startup time


# Bump when the schema or its defaults change, so cached validations are not reused.
_CODE_VERSION = "profile-schema-14"


def _merge(base, child, child_data: dict):
    """Child settings override base field by field; path sets merge; rules append (child later)."""
    from aarm_sandbox.policy.schema import Profile
    settings = base.settings.model_copy(update={k: getattr(child.settings, k)
                                                for k in (child_data.get("settings") or {})})
    path_sets = {**base.path_sets, **child.path_sets}
    child_ids = {r.id for r in child.rules}
    rules = [r for r in base.rules if r.id not in child_ids] + list(child.rules)
    defaults = {**base.defaults, **(child.defaults if "defaults" in child_data else {})}
    data_classes = {**base.data_classes, **child.data_classes}
    destination_sets = {**base.destination_sets, **child.destination_sets}
    return Profile(id=child.id, version=child.version, description=child.description or base.description,
                   extends=child.extends, settings=settings, path_sets=path_sets, rules=rules,
                   defaults=defaults, data_classes=data_classes, destination_sets=destination_sets)
