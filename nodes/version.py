"""The pack's version: the one in pyproject.toml, which the node registry publishes (read, never copied).

Imports no ComfyUI: cli.py loads it on its own.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@functools.lru_cache(maxsize=None)
def pack_version() -> str:
    """``[project] version`` of pyproject.toml ("unknown" if the file is missing or has none)."""
    try:
        text = PYPROJECT.read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    m = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
    return m.group(1) if m else "unknown"
