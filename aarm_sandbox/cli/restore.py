"""`aarm-sandbox restore SESSION [PATH...] [--force] [--list]`: undo quarantined deletions.

With the quarantine transform an agent's `rm -rf` moved files into the session's trash
instead of destroying them; this command puts them back (or lists what is there). Every
path printed went through the journal's escaping: the names were chosen by the agent and
must not be able to drive the reader's terminal.
"""
from __future__ import annotations

import os
import sys
from datetime import datetime

from aarm_sandbox.enforce.quarantine import (default_trash_root, list_quarantined, read_manifest,
                                             restore)
from aarm_sandbox.journal.render import escape_text

EXIT_OK = 0
EXIT_NOT_ALL_RESTORED = 1
EXIT_NO_TRASH = 2


def _show(path: str | bytes) -> str:
    return escape_text(os.fsdecode(path))


def _when(ts: object) -> str:
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return escape_text(str(ts))


def _print_listing(session: str) -> int:
    for entry in list_quarantined(session):
        record = entry.record
        kind = escape_text(str(record.get("type", "?")))
        print(f"{_show(entry.original)}\t{kind}\t{record.get('size', '?')}\t{_when(record.get('ts'))}")
    return EXIT_OK


def _selected_were_stashed(session: str, paths: list[str]) -> list[str]:
    """Requested paths the manifest has never heard of (so "nothing happened" is not
    mistaken for success)."""
    entries, _ = read_manifest(default_trash_root(session))
    originals = [e.original for e in entries]
    unknown = []
    for path in paths:
        wanted = os.fsencode(os.path.abspath(path))
        prefix = wanted.rstrip(b"/") + b"/"
        if not any(o == wanted or o.startswith(prefix) for o in originals):
            unknown.append(path)
    return unknown


def restore_cmd(session: str, paths: list[str], force: bool = False, list_only: bool = False) -> int:
    """Restore (or with list_only, list) a session's quarantined entries. Exit 0 if all
    requested entries were restored or listed, 1 if some could not be, 2 without a trash."""
    root = default_trash_root(session)
    if not (root / "manifest.jsonl").is_file():
        print(f"aarm-sandbox: no quarantine for session {escape_text(session)} (looked in {_show(str(root))})",
              file=sys.stderr)
        return EXIT_NO_TRASH
    if list_only:
        return _print_listing(session)
    unknown = _selected_were_stashed(session, paths) if paths else []
    results = restore(session, paths or None, force=force)
    for result in results:
        print(f"{escape_text(result.status)}\t{_show(result.path)}")
    for path in unknown:
        print(f"not in quarantine\t{_show(path)}")
    if not results and not unknown:
        print("nothing left to restore")
    failed = unknown or any(r.status != "restored" for r in results)
    return EXIT_NOT_ALL_RESTORED if failed else EXIT_OK
