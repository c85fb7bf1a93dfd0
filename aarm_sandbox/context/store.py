"""Session context that outlives a session: which files of a workspace carry sensitive data.

A file written by a tainted session keeps its taint for later sessions of the same
workspace (`run --context-store DIR`): reading it taints the new session, which then cannot
send anything out. Entries are a path plus the inode it had, so a file replaced since is
not tainted by its name alone; a tainted file renamed outside any session loses its taint
(a limit stated in the README).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class ContextStore:
    def __init__(self, directory: str, workspace: str):
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = hashlib.sha256(workspace.encode("utf-8", "surrogateescape")).hexdigest()[:24]
        self.file = self.dir / f"taint-{key}.json"

    def _data(self) -> dict:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def programs(self) -> set[str]:
        """Programs earlier sessions of this workspace ran (for `first_time` rules)."""
        return {p for p in self._data().get("programs", []) if isinstance(p, str)}

    def load(self) -> set[str]:
        data = self._data()
        out = set()
        for entry in data.get("files", []):
            path, ino = entry.get("path"), entry.get("ino")
            try:
                if isinstance(path, str) and os.lstat(path).st_ino == ino:
                    out.add(path)
            except OSError:
                pass
        return out

    def save(self, tainted: set[str], programs: set[str] = frozenset()) -> None:
        files = []
        for path in sorted(tainted):
            try:
                files.append({"path": path, "ino": os.lstat(path).st_ino})
            except OSError:
                pass                            # gone: nothing left to carry the data
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "files": files, "programs": sorted(programs)}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.file)
