"""The four frontend configurations the browser tests run in (docs/frontend.md).

* ``pinned-classic`` / ``pinned-nodes2``: the frontend the host pins (the installed ``comfyui-frontend-package``,
  1.27.10 for ComfyUI 0.3.64), Nodes 2.0 (setting ``Comfy.VueNodes.Enabled``) off / on;
* ``newest-classic`` / ``newest-nodes2``: the newest ``comfyui-frontend-package`` from PyPI, unpacked (never
  installed over the pinned one) and served by the same host with ``--front-end-root``.

The newest frontend is found at ``$DPIR_NEWEST_FRONTEND`` (authoritative when set: the wheel's unpacked
``comfyui_frontend_package/static`` folder, or a folder holding it; ``.ci/run`` downloads it there), else the
highest ``~/comfy/frontends/*/comfyui_frontend_package/static``. Without it the two ``newest-*`` configurations
are skipped loudly, by name.

Use in a test module::

    def test_x(frontend, start_server):            # frontend: the parametrised fixture (conftest.py)
        srv = start_server(extra_args=frontend.server_args)
        ...                                        # frontend.settings: POST them to /settings before the page loads
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

NEWEST_ENV = "DPIR_NEWEST_FRONTEND"
DEFAULT_FRONTENDS = Path("~/comfy/frontends")
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"


class FrontendLookup(NamedTuple):
    root: Path | None  # the static folder served with --front-end-root (None: the host's pinned package)
    version: str | None
    reason: str


def _version_key(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.\-]", v))


def _static_version(static: Path) -> str | None:
    """The version of an unpacked frontend wheel: its dist-info name beside the package folder."""
    for info in static.parent.parent.glob("comfyui_frontend_package-*.dist-info"):
        return info.name[len("comfyui_frontend_package-"):-len(".dist-info")]
    return None


def _as_static(path: Path) -> Path | None:
    for p in (path, path / "static", path / "comfyui_frontend_package" / "static"):
        if (p / "index.html").is_file():
            return p.resolve()
    return None


def pinned_frontend() -> FrontendLookup:
    try:
        from importlib.metadata import version

        return FrontendLookup(None, version("comfyui-frontend-package"), "the host's installed package")
    except Exception as e:  # noqa: BLE001  (the host then serves no frontend at all)
        return FrontendLookup(None, None, f"comfyui-frontend-package is not installed ({e})")


def newest_frontend() -> FrontendLookup:
    env = os.environ.get(NEWEST_ENV)
    if env:
        static = _as_static(Path(env).expanduser())
        if static is None:
            return FrontendLookup(None, None, f"{NEWEST_ENV}={env} holds no unpacked frontend (no index.html)")
        return FrontendLookup(static, _static_version(static), f"{NEWEST_ENV}={env}")
    found = []
    for static in DEFAULT_FRONTENDS.expanduser().glob("*/comfyui_frontend_package/static"):
        v = _static_version(static)
        if v and (static / "index.html").is_file():
            found.append((_version_key(v), v, static.resolve()))
    if not found:
        return FrontendLookup(None, None, f"{NEWEST_ENV} unset and no unpacked frontend under {DEFAULT_FRONTENDS}")
    _, v, static = max(found)
    return FrontendLookup(static, v, f"newest under {DEFAULT_FRONTENDS}")


@dataclass(frozen=True)
class FrontendConfig:
    name: str  # pinned-classic, pinned-nodes2, newest-classic, newest-nodes2
    which: str  # pinned | newest
    vue_nodes: bool
    root: Path | None
    version: str | None
    reason: str  # where it was found, or why not

    @property
    def available(self) -> bool:
        return self.version is not None and (self.which == "pinned" or self.root is not None)

    @property
    def server_args(self) -> list[str]:
        """start_server(extra_args=...) for this frontend."""
        return ["--front-end-root", str(self.root)] if self.root is not None else []

    @property
    def settings(self) -> dict:
        """The user settings of this configuration (POST /settings before the page loads)."""
        return {VUE_NODES_SETTING: self.vue_nodes}

    @property
    def label(self) -> str:
        return f"{self.name} (frontend {self.version or '?'}, Nodes 2.0 {'on' if self.vue_nodes else 'off'})"

    def at_least(self, version: str) -> bool:
        return self.version is not None and _version_key(self.version) >= _version_key(version)


def configurations() -> list[FrontendConfig]:
    out = []
    for which, lookup in (("pinned", pinned_frontend()), ("newest", newest_frontend())):
        for vue in (False, True):
            out.append(FrontendConfig(f"{which}-{'nodes2' if vue else 'classic'}", which, vue, lookup.root,
                                      lookup.version, lookup.reason))
    return out


CONFIGURATIONS = configurations()
