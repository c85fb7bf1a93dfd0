"""Load a profile (built-in name or YAML file), resolve `extends`, report errors by line.

A user who mistypes a field gets `file:line: rules[2].decison: unknown field (allowed: ...)`
and exit status 125, never a traceback.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from aarm_sandbox.policy.schema import Profile, Rule, Settings

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "profiles_builtin"


class ProfileError(Exception):
    """A profile cannot be used; the message names file, line, field and the fix."""


@dataclass(frozen=True)
class LoadedProfile:
    profile: Profile
    source: str          # file path
    sha256: str          # of the file bytes as loaded (the leaf file)


def builtin_dir() -> Path:
    # Installed: aarm_sandbox/profiles_builtin (package data); source tree: ./profiles.
    if BUILTIN_DIR.is_dir():
        return BUILTIN_DIR
    return Path(__file__).resolve().parents[2] / "profiles"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


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


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item."""


def _parse_with_lines(text: str, source: str) -> tuple[object, dict[tuple, int]]:
    lines: dict[tuple, int] = {}
    try:
        node = yaml.compose(text, Loader=_LineLoader)
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
    if node is not None:
        walk(node, ())
    data = yaml.load(text, Loader=yaml.SafeLoader)
    return data, lines


def _allowed_fields(loc: tuple) -> str:
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


def _format_errors(err: ValidationError, source: str, lines: dict[tuple, int]) -> str:
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


def _load_one(path: Path) -> tuple[Profile, str, dict]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: not UTF-8 text") from None
    data, lines = _parse_with_lines(text, str(path))
    if not isinstance(data, dict):
        raise ProfileError(f"{path}:1: a profile is a mapping with at least `id:`")
    try:
        prof = Profile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(_format_errors(e, str(path), lines)) from None
    return prof, hashlib.sha256(raw).hexdigest(), data


def load_profile(name_or_file: str, _seen: tuple[str, ...] = ()) -> LoadedProfile:
    path = locate(name_or_file)
    prof, digest, data = _load_one(path)
    if prof.extends:
        if prof.extends in _seen or prof.extends == prof.id:
            raise ProfileError(f"{path}: `extends` cycle through {prof.extends!r}")
        base = load_profile(prof.extends, _seen + (prof.id,)).profile
        prof = _merge(base, prof, data)
    return LoadedProfile(prof, str(path), digest)


def _merge(base: Profile, child: Profile, child_data: dict) -> Profile:
    """Child settings override base field by field; path sets merge; rules append (child later)."""
    settings = base.settings.model_copy(update={k: getattr(child.settings, k)
                                                for k in (child_data.get("settings") or {})})
    path_sets = {**base.path_sets, **child.path_sets}
    child_ids = {r.id for r in child.rules}
    rules = [r for r in base.rules if r.id not in child_ids] + list(child.rules)
    defaults = {**base.defaults, **(child.defaults if "defaults" in child_data else {})}
    return Profile(id=child.id, version=child.version, description=child.description or base.description,
                   extends=child.extends, settings=settings, path_sets=path_sets, rules=rules,
                   defaults=defaults)
