"""web/js type-checks (``tsc --checkJs`` over its JSDoc) against the frontend's published types
(``@comfyorg/comfyui-frontend-types``, pinned in tools/typecheck/package-lock.json): an API that the frontend
renamed or removed fails here, not in an artist's graph. Installs the pinned packages with ``npm ci`` when
tools/typecheck/node_modules is missing or older than the lock file. Skips loudly without node/npm."""
from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

TYPECHECK = Path(__file__).resolve().parents[1] / "tools" / "typecheck"


def _skip(reason: str):
    text = f"WEB TYPE CHECK SKIPPED: {reason}"
    warnings.warn(text, pytest.PytestWarning, stacklevel=2)
    pytest.skip(text)


def test_web_js_type_checks_against_the_frontend_types():
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        _skip("node/npm not on the PATH (install Node.js 20+ to type-check web/js)")
    lock, installed = TYPECHECK / "package-lock.json", TYPECHECK / "node_modules" / ".package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        ci = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TYPECHECK, capture_output=True, text=True,
                            timeout=600)
        assert ci.returncode == 0, f"npm ci in {TYPECHECK} failed:\n{ci.stdout[-3000:]}\n{ci.stderr[-3000:]}"
    check = subprocess.run([npm, "run", "--silent", "check"], cwd=TYPECHECK, capture_output=True, text=True,
                           timeout=600)
    assert check.returncode == 0, f"tsc found type errors in web/js:\n{check.stdout[-6000:]}\n{check.stderr[-2000:]}"
