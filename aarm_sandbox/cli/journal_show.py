"""`aarm-sandbox journal show FILE`: a readable timeline of a session's decisions."""
from __future__ import annotations

import json
import sys


def load(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"aarm-sandbox: {path}:{n}: not a journal record ({e.msg})")
    return out


def _safe(s: str) -> str:
    """Control characters and escapes from agent-chosen names are shown, never interpreted."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(s))


def show(path: str, as_json: bool = False, only_denied: bool = False) -> int:
    try:
        records = load(path)
    except OSError as e:
        print(f"aarm-sandbox: cannot read journal {path}: {e.strerror}", file=sys.stderr)
        return 1
    if as_json:
        for r in records:
            print(json.dumps(r, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    t = Table(title=f"journal {path}", show_lines=False)
    for col in ("seq", "decision", "action", "target", "rule / reason"):
        t.add_column(col, overflow="fold")
    for r in records:
        typ = r.get("type")
        if typ == "receipt":
            res = r["decision"]["result"]
            if only_denied and res == "allow":
                continue
            style = {"allow": "green", "deny": "bold red"}.get(res, "yellow")
            would = r["decision"].get("would")
            label = res + (f" (would {would})" if would else "")
            t.add_row(str(r.get("seq")), Text(label, style=style), r["action"]["type"],
                      Text(_safe(r["action"]["target"])),
                      Text(_safe(f"{r['decision']['rule']}: {r['decision']['reason']}")))
        elif typ in ("session.start", "session.end") and not only_denied:
            detail = (" ".join(_safe(a) for a in r.get("command", [])) if typ == "session.start"
                      else f"exit {r.get('exit_status')} decisions {r.get('decisions')}")
            t.add_row(str(r.get("seq")), Text(typ, style="cyan"), "", Text(detail), "")
        elif typ == "error" and not only_denied:
            t.add_row(str(r.get("seq")), Text("error", style="magenta"), _safe(r.get("syscall", "")),
                      "", Text(_safe(f"{r.get('errno')}: {r.get('reason')}")))
    Console().print(t)
    return 0
