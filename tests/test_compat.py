"""nodes/compat.py's feature detection, without a ComfyUI: the choices it makes for a host shaped like 0.3.64
and for one shaped like 0.38.x (the option and file layouts read in the stored newer sources), written here
as small files. The host-side checks are in tests/host/test_compat_drift.py."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("dpir_compat_unit", Path(__file__).parents[1] / "nodes" / "compat.py")
compat = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # dataclasses look it up there
spec.loader.exec_module(compat)

OLD_ARGS = '''import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--cpu", action="store_true")
parser.add_argument("--disable-api-nodes", action="store_true", help="Disable loading all api nodes.")
parser.add_argument("--extra-model-paths-config", type=str, nargs='+', action='append')
'''
NEW_ARGS = OLD_ARGS.replace('parser.add_argument("--disable-api-nodes"', '''parser.add_argument("--offline", action="store_true")
vram_group = parser.add_mutually_exclusive_group()
vram_group.add_argument("--highvram", action="store_true")
parser.add_argument("--disable-api-nodes"''')
OLD_MAIN = 'extra_model_paths_config_path = os.path.join(here, "extra_model_paths.yaml")\n'
NEW_MAIN = 'extra_paths_config_path = os.path.join(install_dir, "extra_paths.yaml")\n' + OLD_MAIN


def host(tmp_path: Path, args: str, main: str) -> Path:
    (tmp_path / "comfy").mkdir(parents=True)
    (tmp_path / "comfy" / "cli_args.py").write_text(args)
    (tmp_path / "main.py").write_text(main)
    return tmp_path


def test_cli_options_are_read_without_importing(tmp_path):
    root = host(tmp_path, NEW_ARGS, NEW_MAIN)
    assert compat.cli_options(root) == {"--cpu", "--offline", "--highvram", "--disable-api-nodes",
                                        "--extra-model-paths-config"}


def test_no_api_nodes_flag_follows_the_host(tmp_path):
    assert compat.no_api_nodes_flags(host(tmp_path / "old", OLD_ARGS, OLD_MAIN)) == ["--disable-api-nodes"]
    assert compat.no_api_nodes_flags(host(tmp_path / "new", NEW_ARGS, NEW_MAIN)) == ["--offline"]
    bare = OLD_ARGS.replace('parser.add_argument("--disable-api-nodes", action="store_true", help="Disable loading '
                            'all api nodes.")\n', "")
    assert compat.no_api_nodes_flags(host(tmp_path / "none", bare, OLD_MAIN)) == []


def test_path_config_follows_what_main_reads(tmp_path):
    old, new = host(tmp_path / "old", OLD_ARGS, OLD_MAIN), host(tmp_path / "new", NEW_ARGS, NEW_MAIN)
    assert compat.path_config_name(old) == "extra_model_paths.yaml"
    assert compat.path_config_name(new) == "extra_paths.yaml"
    assert compat.path_configs(new) == []
    (new / "extra_model_paths.yaml").write_text("a: {}")
    assert compat.path_configs(new) == [new / "extra_model_paths.yaml"]  # the legacy file without the new one
    (new / "extra_paths.yaml").write_text("b: {}")
    assert compat.path_configs(new) == [new / "extra_paths.yaml"]  # the new one wins, as main.py does
    (old / "extra_paths.yaml").write_text("b: {}")  # an old host does not know it
    assert compat.path_configs(old) == []


FOLDER_PATHS = '''if args.base_directory:
    base_path = os.path.abspath(args.base_directory)
else:
    base_path = os.path.dirname(os.path.realpath(__file__))
folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())
'''


def test_custom_node_roots_follow_the_base_directory_and_the_yaml_files(tmp_path):
    root = host(tmp_path / "comfy", OLD_ARGS, OLD_MAIN)
    (root / "folder_paths.py").write_text(FOLDER_PATHS)
    base = tmp_path / "base"
    assert compat.custom_node_roots(root) == [root / "custom_nodes"]
    assert compat.custom_node_roots(root, base) == [base / "custom_nodes"]  # not the host's: ComfyUI skips it
    # a host whose custom_nodes stays put under --base-directory keeps its own
    (root / "folder_paths.py").write_text(FOLDER_PATHS.replace('os.path.join(base_path, "custom_nodes")',
                                                               'os.path.join(install_dir, "custom_nodes")'))
    assert compat.custom_node_roots(root, base) == [root / "custom_nodes"]
    (root / "folder_paths.py").write_text(FOLDER_PATHS)
    # YAML entries, resolved as utils/extra_config.py does: base_path relative to the file, several lines
    (root / "extra_model_paths.yaml").write_text("a:\n  base_path: shared\n  custom_nodes: |\n    nodes1\n    /abs/nodes2\n"
                                                 "  checkpoints: models/checkpoints\nb:\n  custom_nodes: more\n")
    given = tmp_path / "cfg" / "given.yaml"
    given.parent.mkdir()
    given.write_text('{"c": {"custom_nodes": "cn"}, "d": null}')
    assert compat.custom_node_roots(root, base, (given,)) == [
        base / "custom_nodes", root / "shared" / "nodes1", Path("/abs/nodes2"), root / "more", given.parent / "cn"]
    given.write_text("not: [valid")  # ComfyUI reports a broken file itself
    assert compat.custom_node_roots(root, None, (given,))[0] == root / "custom_nodes"


def test_reload_factory_only_where_the_patcher_has_it():
    class Classic:  # 0.3.64's ModelPatcher has no cached_patcher_init
        pass

    class Newer:
        cached_patcher_init = None

    def factory(name, disable_dynamic=False):
        return (name, disable_dynamic), "branch"

    assert not compat.set_reload_factory(Classic(), factory, ("x",), 0) and not hasattr(Classic, "cached_patcher_init")
    p = Newer()
    assert compat.set_reload_factory(p, factory, ("x",), 0)
    fn, args, index = p.cached_patcher_init
    assert fn(*args, disable_dynamic=True)[index] == ("x", True)  # as ModelPatcher.clone(disable_dynamic=True) calls it


def test_staged_dtype_under_either_patcher():
    lin = torch.nn.Linear(2, 2)
    assert compat.staged_dtype(lin) == torch.float32 and not compat.is_dynamic(object())
    lin.weight_comfy_model_dtype = torch.float8_e4m3fn  # archived at build time; the dynamic patcher casts to it
    assert compat.staged_dtype(lin) == torch.float8_e4m3fn and compat.staged_dtype(lin, "bias") == torch.float32


def test_accepts_detects_parameters():
    assert compat._accepts(lambda sd, model_options={}, disable_dynamic=False: 0, "disable_dynamic")
    assert not compat._accepts(lambda sd, model_options={}: 0, "disable_dynamic")
    assert compat._accepts(lambda sd, **kw: 0, "disable_dynamic")
