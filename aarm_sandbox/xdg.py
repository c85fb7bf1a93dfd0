"""Where aarm-sandbox keeps its files, by the XDG base-directory rules.

A module of its own with no imports from the pipeline, so the light commands (approvals,
context, restore) can find sessions without loading the launcher and the native module.
"""
from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Journals, trash, private copies, control sockets: $XDG_STATE_HOME/aarm-sandbox."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "aarm-sandbox"


def config_dir() -> Path:
    """Signing keys and trusted keys: $XDG_CONFIG_HOME/aarm-sandbox."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "aarm-sandbox"


def cache_dir() -> Path:
    """Compiled filters and validated profiles: $XDG_CACHE_HOME/aarm-sandbox. What the next
    run loads from here decides its confinement: hidden from the sandbox like state_dir."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aarm-sandbox"


def control_dir() -> Path:
    """One control socket per running session (approvals, context)."""
    return state_dir() / "control"
