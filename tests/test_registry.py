"""What the node registry, ComfyUI-Manager and the licence need: pyproject.toml's metadata against requirements.txt,
the pack's own version as the CLI reports it (the server's route: tests/host/test_server_smoke.py), and proof that
installing requirements.txt as ComfyUI-Manager does never moves torch."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import PACK_ROOT

PYPROJECT = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
FRONTEND = "comfyui-frontend-package"  # the registry reads the frontend range from this dependency (comfy-cli)
TORCH = {"torch", "torchvision", "torchaudio"}


def requirement_lines() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in (PACK_ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


def as_set(reqs) -> set[tuple[str, str]]:
    return {(canonicalize_name(r.name), str(r.specifier)) for r in reqs}


def test_pyproject_dependencies_are_requirements_txt():
    """The registry publishes pyproject.toml's list, ComfyUI-Manager installs requirements.txt: the same
    packages and bounds (plus the frontend range, which is metadata, not something pip installs)."""
    deps = [Requirement(d) for d in PROJECT["dependencies"]]
    assert as_set(d for d in deps if canonicalize_name(d.name) != FRONTEND) == as_set(map(Requirement, requirement_lines()))


def test_registry_metadata():
    # the registry's rules for a node id: letters, digits, - _ ., no leading digit or special, no doubled special
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?![-_.]))*", PROJECT["name"]) and len(PROJECT["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])  # the registry wants X.Y.Z
    assert PROJECT["description"] and COMFY["PublisherId"] and COMFY["DisplayName"]
    licence = (PACK_ROOT / PROJECT["license"]["file"]).read_text()
    assert licence.split()[:5] == ["GNU", "GENERAL", "PUBLIC", "LICENSE", "Version"] and "Version 3, 29 June 2007" in licence
    urls = PROJECT["urls"]
    repo = urls["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo)
    assert urls["Documentation"].startswith(repo + "/") and urls["Bug Tracker"] == urls["Issues"] == repo + "/issues"
    owner_name = repo.removeprefix("https://github.com/")
    icon = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(owner_name)}/main/(.+)", COMFY["Icon"])
    assert icon and (PACK_ROOT / icon.group(1)).is_file()  # a file of this repository, served from main


def test_comfyui_and_frontend_ranges_admit_what_the_pack_is_tested_on():
    """requires-comfyui and the frontend range hold the versions nodes/compat.py's TESTED_ON names."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpir_compat_registry", PACK_ROOT / "nodes" / "compat.py")
    compat = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, compat)
    spec.loader.exec_module(compat)
    comfyui, frontend = re.fullmatch(r"ComfyUI (\S+), frontend (\S+)", compat.TESTED_ON).groups()
    assert Version(comfyui) in SpecifierSet(COMFY["requires-comfyui"])
    front = next(Requirement(d) for d in PROJECT["dependencies"] if d.startswith(FRONTEND))
    assert front.specifier and Version(frontend) in front.specifier


def test_cli_reports_the_pyproject_version():
    run = subprocess.run([sys.executable, str(PACK_ROOT / "cli.py"), "--version"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"ComfyUI-DPIR {PROJECT['version']}"


def test_requirements_name_no_torch_and_nothing_but_packages():
    """ComfyUI-Manager runs `pip install -r requirements.txt` in ComfyUI's own environment. torch there is the
    build the artist chose (CUDA, ROCm, a nightly); a torch/torchvision/torchaudio line, even without a bound,
    is upgraded (possibly to PyPI's other build) by `pip install -U -r`, and options, URLs or nested files could
    pull one in from elsewhere."""
    for line in requirement_lines():
        assert not line.startswith("-"), f"requirements.txt: an option line {line!r}"
        req = Requirement(line)
        assert canonicalize_name(req.name) not in TORCH, f"requirements.txt names {req.name}"
        assert req.url is None, f"requirements.txt: {line!r} installs from a URL"


def _dry_run(*extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
                           "--report", "-", *extra, "-r", str(PACK_ROOT / "requirements.txt")],
                          capture_output=True, text=True, timeout=600, env=env)


def _installs(run: subprocess.CompletedProcess) -> dict[str, str]:
    report = json.loads(run.stdout)
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


def test_manager_install_leaves_torch_alone():
    """What ComfyUI-Manager runs, resolved by pip itself against this environment (which has torch): torch is not
    among what pip would install."""
    run = _dry_run()
    assert run.returncode == 0, run.stderr[-2000:]
    moved = TORCH & set(_installs(run))
    assert not moved, f"pip install -r requirements.txt would install {moved}"


def test_even_an_eager_upgrade_leaves_torch_alone():
    """The worst case: every listed package and all of its dependencies upgraded to PyPI's newest (`-U
    --upgrade-strategy eager`), ignoring this machine's pip configuration (here a constraints file caps torch;
    an artist's machine has none). Any package that requires torch would bring torch into that set. Needs PyPI."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    env.pop("PIP_CONSTRAINT", None)
    run = _dry_run("--upgrade", "--upgrade-strategy", "eager", env=env)
    if run.returncode != 0 and re.search(r"NewConnectionError|Could not fetch URL|"
                                         r"Temporary failure in name resolution|ConnectTimeout", run.stderr):
        pytest.skip(f"PyPI not reachable: {run.stderr.strip().splitlines()[-1][:200]}")
    assert run.returncode == 0, run.stderr[-2000:]
    installs = _installs(run)
    assert not TORCH & set(installs), f"an eager upgrade of requirements.txt would install {installs}"


def test_publish_workflow_runs_the_registry_action_on_a_version_change():
    yaml = pytest.importorskip("yaml")
    flow = yaml.safe_load((PACK_ROOT / ".github" / "workflows" / "publish.yml").read_text())
    on = flow[True]  # YAML 1.1 reads the key `on` as true
    assert on["push"] == {"branches": ["main"], "paths": ["pyproject.toml"]} and "workflow_dispatch" in on
    publish = flow["jobs"]["publish-node"]
    assert publish["needs"] == "version" and "changed == 'true'" in publish["if"]
    step = next(s for s in publish["steps"] if s.get("uses", "").startswith("Comfy-Org/publish-node-action@"))
    assert step["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"
    assert 'tomllib.loads(sys.stdin.read())["project"]["version"]' in flow["jobs"]["version"]["steps"][1]["run"]
