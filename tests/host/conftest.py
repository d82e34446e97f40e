"""Fixtures for tests that run the pack inside a real ComfyUI server.

Fixtures (session scope):

* ``comfyui_path`` -- the ComfyUI checkout (skips the test when there is none);
* ``start_server`` -- factory ``start_server(models=None, inputs=None,
  extra_model_paths=None, extra_args=(), fresh=False) -> Server``; the same
  arguments give the same (already running) server unless ``fresh``; all are
  stopped at the end of the session;
* ``comfy_server`` -- a bare server (no model files), shared;
* ``object_info`` -- its ``GET /object_info``;
* ``workflow_api`` -- ``nodes/workflow_api.py`` loaded stand-alone (no host needed);
* ``dpir_models`` -- the extra_model_paths mapping of one tiny model set (``dpir_env.write_model_set``);
* ``dpir_server`` -- one server on that model set, shared by the modules that use it (their inputs are
  added with ``Server.add_input``).

* ``frontend`` -- parametrised over the four frontend configurations of ``frontends.py`` (pinned / newest
  frontend × Nodes 2.0 off / on; ids ``pinned-classic`` ...); a configuration whose frontend is not found is
  skipped, loudly (warning + banner), by name.

Every test using one of the host fixtures gets the ``host`` marker and is
skipped, with a banner in the terminal summary, when no ComfyUI is found
(``$COMFYUI_PATH``, a folder above the pack, or ``~/comfy/ComfyUI``). When a
host test fails, the tail of the server log is added to its report.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest

from .comfy_harness import PACK_NAME, PACK_ROOT, Server, device_args, find_comfyui, host_device, load_compat
from .comfy_harness import load_workflow_api
from .comfy_harness import start_server as _start_server
from .frontends import CONFIGURATIONS, NEWEST_ENV

HOST = find_comfyui()
HOST_FIXTURES = frozenset({"comfyui_path", "start_server", "comfy_server", "object_info"})
_skipped_for_host: list[str] = []
_servers: list[Server] = []  # running ones
_started: list[str] = []  # urls of all started this session
_skipped_frontends: dict[str, str] = {}  # configuration -> why


def pytest_configure(config):
    config.addinivalue_line("markers", "host: needs a real ComfyUI (skipped, loudly, without one)")


def pytest_collection_modifyitems(config, items):
    reason = f"HOST TESTS SKIPPED: {HOST.reason} -- set COMFYUI_PATH to a ComfyUI checkout"
    for item in items:
        if not HOST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            continue
        item.add_marker(pytest.mark.host)
        if HOST.path is None:
            item.add_marker(pytest.mark.skip(reason=reason))
            _skipped_for_host.append(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = set(_skipped_for_host)
    for rep in terminalreporter.stats.get("skipped", []):  # other host tests' own skipif(no ComfyUI)
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3 else str(rep.longrepr)
        if "ComfyUI" in str(reason) and ("no ComfyUI" in str(reason) or "HOST TESTS SKIPPED" in str(reason)):
            skipped.add(rep.nodeid)
    if HOST.path is None and skipped:
        tr = terminalreporter
        tr.write_line("")
        tr.write_sep("!", "HOST TESTS SKIPPED: no ComfyUI found", red=True, bold=True)
        for line in (
            f"{len(skipped)} test(s) that run the pack inside a real ComfyUI did NOT run.",
            f"Reason: {HOST.reason}.",
            "To run them, set COMFYUI_PATH to a ComfyUI source checkout (with its requirements",
            "installed), e.g.  COMFYUI_PATH=~/comfy/ComfyUI python -m pytest tests/host",
            "or install the pack as ComfyUI/custom_nodes/" + PACK_NAME + ".",
        ):
            tr.write_line("!!! " + line, red=True, bold=True)
        tr.write_sep("!", red=True, bold=True)
    if _skipped_frontends:
        tr = terminalreporter
        tr.write_line("")
        tr.write_sep("!", "FRONTEND CONFIGURATIONS SKIPPED", red=True, bold=True)
        for name, why in _skipped_frontends.items():
            tr.write_line(f"!!! {name}: {why}", red=True, bold=True)
        tr.write_line(f"!!! set {NEWEST_ENV} to an unpacked comfyui-frontend-package wheel (.ci/run does it)",
                      red=True, bold=True)
        tr.write_sep("!", red=True, bold=True)
    if HOST.path is not None and _started:
        terminalreporter.write_line(f"host tests: {len(_started)} ComfyUI server(s) from {HOST.path} ({HOST.reason})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and HOST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        for srv in _servers:
            rep.sections.append((f"ComfyUI server log tail ({srv.url}, {srv.log_path})", srv.log_tail(80)))


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    if HOST.path is None:
        pytest.skip(f"HOST TESTS SKIPPED: {HOST.reason}")
    if host_device() == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("DPIR_TEST_DEVICE=cuda, but torch finds no GPU")
    return HOST.path


def _key(value):
    """A hashable, order-stable key for start_server arguments."""
    return json.dumps(value, sort_keys=True, default=str)


@pytest.fixture(scope="session")
def start_server(comfyui_path, tmp_path_factory):
    cache: dict[str, Server] = {}

    def start(models=None, inputs=None, extra_model_paths=None, extra_args=(), fresh=False) -> Server:
        key = _key([models, inputs, extra_model_paths, list(extra_args)])
        srv = cache.get(key)
        if srv is not None and not fresh and srv.proc is not None and srv.proc.poll() is None:
            return srv
        base = tmp_path_factory.mktemp("comfy-base")
        srv = _start_server(comfyui_path, base, models=models, inputs=inputs,
                            extra_model_paths=extra_model_paths, extra_args=extra_args)
        _servers.append(srv)
        _started.append(srv.url)
        if not fresh:
            cache[key] = srv
        return srv

    yield start
    while _servers:
        _servers.pop().stop()


@pytest.fixture(scope="session", params=CONFIGURATIONS, ids=[c.name for c in CONFIGURATIONS])
def frontend(request):
    """One frontend configuration (frontends.FrontendConfig); session scope, so pytest runs the tests of one
    configuration together and its servers and pages are shared."""
    cfg = request.param
    if not cfg.available:
        why = f"frontend configuration {cfg.name} SKIPPED: {cfg.reason}"
        _skipped_frontends[cfg.name] = cfg.reason
        warnings.warn(why, pytest.PytestWarning, stacklevel=2)
        pytest.skip(why)
    return cfg


@pytest.fixture(scope="session")
def comfy_server(start_server) -> Server:
    return start_server()


@pytest.fixture(scope="session")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


@pytest.fixture(scope="session")
def workflow_api():
    return load_workflow_api()


@pytest.fixture(scope="session")
def dpir_models(tmp_path_factory) -> dict:
    from .dpir_env import write_model_set

    return write_model_set(tmp_path_factory.mktemp("dpir_models"))


@pytest.fixture(scope="session")
def dpir_server(start_server, dpir_models) -> Server:
    return start_server(extra_model_paths=dpir_models)


@pytest.fixture(scope="session")
def pack_nodes(comfyui_path, tmp_path_factory):
    """ComfyUI imported in-process with a models folder of tiny files, and the pack loaded as ComfyUI loads it;
    on the GPU (``host_device``) in IEEE fp32: TF32 off, so the fp32 tolerances hold there too."""
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    import tiny_models as tm

    SPEC = tm.TinySpec()
    tm.write_transformer_folder(models / "dpir" / "transformer", SPEC)
    tm.write_vae_folder(models / "dpir" / "robust_vae", SPEC, robust=True, full=True)
    tm.write_vae_file(models / "vae" / "sd3_vae.safetensors", SPEC, full=True)
    tm.write_clip_vision_folder(models / "clip_vision" / "clip_b32", SPEC, which=1)
    tm.write_clip_vision_folder(models / "clip_vision" / "clip_bigg", SPEC, which=2)
    (base / "custom_nodes").mkdir()
    argv = sys.argv
    sys.argv = ["main.py", *device_args(host_device()), "--base-directory", str(base),
                *load_compat().no_api_nodes_flags(comfyui_path)]
    if host_device() == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sys.path.insert(0, str(comfyui_path))
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses sys.argv once)
        import folder_paths

        assert folder_paths.models_dir == str(models), "ComfyUI was already imported with another base directory"
        spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(PACK_ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = pack
        spec.loader.exec_module(pack)
        yield pack.NODE_CLASS_MAPPINGS
    finally:
        sys.argv = argv
