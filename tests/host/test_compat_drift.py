"""Drift check: every ComfyUI internal listed in nodes/compat.py (TOUCH_POINTS) against the host ComfyUI.

Run on another ComfyUI, the failures name what changed there (a symbol gone, a parameter renamed, a model-options
key no longer read, a start-up option removed) instead of failing deep inside a sampler. The table is the single
source: a ComfyUI module imported by the pack but missing from it fails here too.
"""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch

from host.comfy_harness import PACK_ROOT, load_compat
from host.test_conformance import HOST

compat = load_compat()
pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")
POINTS = {f"{i:02d}-{tp.target}": tp for i, tp in enumerate(compat.TOUCH_POINTS)}
# top-level names of ComfyUI's own modules (the host's folder, not site-packages)
COMFY_TOP = ("comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "execution", "server", "nodes",
             "node_helpers", "latent_preview", "utils", "main")


def resolve(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def host_file(target: str) -> Path:
    name = target.partition(":")[0]
    rel = name if name.endswith(".py") else name.replace(".", "/") + ".py"
    return HOST.path / rel


@pytest.mark.parametrize("key", list(POINTS))
def test_touch_point(pack_nodes, key):
    tp = POINTS[key]
    where = f"{tp.target} (used by {tp.used_by}; newer sources: {tp.status})"
    if tp.kind == "cli":
        missing = set(tp.params) - compat.cli_options(HOST.path)
        assert not missing, f"this ComfyUI has no {sorted(missing)} option: {where}"
        return
    if tp.kind == "source":
        path = host_file(tp.target)
        assert path.is_file(), f"this ComfyUI has no {path.relative_to(HOST.path)}: {where}"
        text = path.read_text(encoding="utf-8")
        missing = [s for s in tp.params if s not in text]
        assert not missing, f"{path.relative_to(HOST.path)} no longer mentions {missing}: {where}"
        return
    try:
        obj = resolve(tp.target)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"gone from this ComfyUI ({e}): {where}")
    if tp.kind == "call":
        params = inspect.signature(obj).parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        missing = [p for p in tp.params if p not in params and not var_kw]
        assert not missing, f"{tp.target}{inspect.signature(obj)} lacks {missing}: {where}"
        new = [p for p in tp.absent if p in params]
        assert not new, f"{tp.target}{inspect.signature(obj)} now has {new}, which breaks the pack's call: {where}"


def test_table_is_well_formed():
    statuses = {compat.CHECKED, compat.ADAPTED, compat.NOT_STORED}
    for tp in compat.TOUCH_POINTS:
        assert tp.kind in ("attr", "call", "source", "cli") and tp.status in statuses and tp.used_by, tp
        assert tp.kind not in ("source", "cli") or tp.params, tp


def _module(target: str) -> str:
    """The module a touch point is in: "comfy.sd:VAE" -> comfy.sd, "utils/extra_config.py" -> utils.extra_config."""
    return target.partition(":")[0].removesuffix(".py").replace("/", ".")


def _comfy_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in COMFY_TOP}


def test_every_comfyui_module_the_pack_imports_is_listed():
    """nodes/, cli.py, bench/ and the host tests import no ComfyUI module that the table does not list."""
    listed = {_module(tp.target) for tp in compat.TOUCH_POINTS} | {"nodes"}  # + ComfyUI's node registry (cli.py)
    files = [*PACK_ROOT.glob("nodes/*.py"), PACK_ROOT / "cli.py", *PACK_ROOT.glob("bench/*.py"),
             *PACK_ROOT.glob("tests/host/*.py"), PACK_ROOT / "tests" / "test_tiny_models.py"]
    unlisted = {f"{m} ({f.relative_to(PACK_ROOT)})" for f in files for m in _comfy_imports(f) if m not in listed}
    assert not unlisted, f"ComfyUI modules used but not in nodes/compat.py TOUCH_POINTS: {sorted(unlisted)}"


def test_flags_and_path_config_follow_the_host():
    """What the harness passes to start a headless server is an option this host has; the YAML name is the one
    its main.py reads."""
    flags = compat.no_api_nodes_flags(HOST.path)
    assert flags and set(flags) <= compat.cli_options(HOST.path)
    main = (HOST.path / "main.py").read_text(encoding="utf-8")
    assert compat.path_config_name(HOST.path) in main


def test_reload_factory_gives_the_same_model(pack_nodes):
    """DPIR Model Loader's MODEL reloads as ComfyUI reloads core models (cached_patcher_init, called with
    disable_dynamic=True for a non-dynamic delegate) where the host has it; the loader accepts the flag everywhere."""
    name = "transformer/diffusion_pytorch_model.safetensors"
    model, _ = pack_nodes["DPIRModelLoader"]().load(name, "bf16")
    init = getattr(model, "cached_patcher_init", None)
    if hasattr(model, "cached_patcher_init"):
        factory, args, index = init
        again = factory(*args, disable_dynamic=True)[index]
    else:  # 0.3.64: no reload factories; the loader's flag is dropped by compat
        again = pack_nodes["DPIRModelLoader"]().load(name, "bf16", disable_dynamic=True)[0]
    assert again is not model and type(again.model) is type(model.model) and not compat.is_dynamic(again)
    ours, theirs = model.model.diffusion_model.state_dict(), again.model.diffusion_model.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k
