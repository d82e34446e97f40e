"""The batch CLI (cli.py): drives a headless ComfyUI it starts itself, through the HTTP API and websocket.

Each run gets its own --base-directory, so nothing is written into the host ComfyUI's folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny_models as tm
from fake_hub import FakeHub

from .comfy_harness import PACK_NAME, PACK_ROOT, copy_host
from .dpir_env import PROMPT_EMBEDDING, write_model_set, write_photo
from .test_downloads import publish

TINY = ["--long-side", "72", "--steps", "2", "--seed", "3", "--cpu"]


def run_cli(comfyui_path, *args, env=None, timeout=900):
    env = {**os.environ, **(env or {}), "COMFYUI_PATH": str(comfyui_path), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(PACK_ROOT / "cli.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    yaml = root / "paths.yaml"
    yaml.write_text(json.dumps(write_model_set(root)))
    return root, yaml


def test_missing_models_are_listed_with_their_folders(comfyui_path, tmp_path):
    photo = write_photo(tmp_path / "photo.png")
    out = run_cli(comfyui_path, photo, "-o", tmp_path / "out", "--base-directory", tmp_path / "base", *TINY)
    assert out.returncode == 2, out.stderr[-3000:]
    for needle in ("transformer/diffusion_pytorch_model.safetensors' is missing", "models/dpir/",
                   "DehongKong/dpir", "sd3_vae.safetensors' is missing", "models/vae/",
                   "clip_vit_b32.safetensors' is missing", "models/clip_vision/", "t5xxl_fp16.safetensors",
                   "cli.py --download"):
        assert needle in out.stderr, needle
    assert not (tmp_path / "out").exists()


MISSING = ("transformer/diffusion_pytorch_model.safetensors' is missing", "sd3_vae.safetensors' is missing",
           "t5xxl_fp16.safetensors", "cli.py --download")


@pytest.mark.parametrize("inside", [True, False], ids=["pack in custom_nodes", "pack outside ComfyUI"])
@pytest.mark.parametrize("base", [False, True], ids=["ComfyUI's folders", "--base-directory"])
def test_the_started_comfyui_loads_the_pack_in_every_layout(comfyui_path, tmp_path, inside, base):
    """The README installs the pack as ComfyUI/custom_nodes/ComfyUI-DPIR; with --base-directory ComfyUI then loads
    the base directory's custom_nodes, not its own, so cli.py must point it at the pack there too. A missing-models
    answer needs the DPIR loaders in /object_info: the pack was loaded. Each layout runs on a throw-away copy of
    the host (ComfyUI writes into its own folders without --base-directory)."""
    host = copy_host(comfyui_path, tmp_path / "ComfyUI")
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    if inside:  # found as the folder above the pack, as an artist's install is
        (host / "custom_nodes" / PACK_NAME).symlink_to(PACK_ROOT, target_is_directory=True)
        cli = host / "custom_nodes" / PACK_NAME / "cli.py"
    else:
        cli, env["COMFYUI_PATH"] = PACK_ROOT / "cli.py", str(host)
    args = [write_photo(tmp_path / "photo.png"), "-o", tmp_path / "out", *TINY]
    if base:
        args += ["--base-directory", tmp_path / "base"]
    out = subprocess.run([sys.executable, str(cli), *map(str, args)], env={**env, "PYTHONUNBUFFERED": "1"},
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert f"starting ComfyUI ({host}" in out.stderr, out.stderr[-2000:]
    assert out.returncode == 2, out.stderr[-3000:]
    for needle in MISSING:
        assert needle in out.stderr, (needle, out.stderr[-3000:])
    assert "unknown node type" not in out.stderr and "did not load" not in out.stderr
    used, unused = (tmp_path / "base", host) if base else (host, tmp_path / "base")
    assert list((used / "input").rglob("*photo.png")) and not list((unused / "input").rglob("*photo.png"))


def test_a_server_without_the_pack_is_named(start_server, tmp_path):
    """--server at a ComfyUI that lacks the DPIR nodes: one actionable line, before any upload."""
    bare = start_server(extra_args=["--whitelist-custom-nodes", "no-such-pack"], fresh=True)
    run = run_cli(Path("/nonexistent"), write_photo(tmp_path / "photo.png"), "-o", tmp_path / "out",
                  "--server", bare.url, *TINY)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"the ComfyUI at {bare.url} has no DPIR nodes: install ComfyUI-DPIR in its custom_nodes" in run.stderr
    assert not list(bare.input_dir.rglob("*photo*"))


def test_folder_batch_reports_bad_images_and_skips_done_ones(comfyui_path, models, tmp_path):
    root, yaml = models
    src = tmp_path / "album"
    write_photo(src / "beach.png", 80, 60, seed=1)
    Image.open(write_photo(src / "sub" / "dog.png", 60, 80, seed=2)).convert("RGB").save(src / "sub" / "dog.jpg")
    (src / "sub" / "dog.png").unlink()
    write_photo(src / "scan16.png", 80, 60, seed=3, mode="I;16")  # 16-bit greyscale
    write_photo(src / "scan48.png", 80, 60, seed=4, mode="RGB;16")  # 16-bit RGB
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (src / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "restored"
    args = [src, "-r", "-o", out_dir, "--base-directory", tmp_path / "base", "--extra-model-paths", yaml,
            "--t5-embedding", PROMPT_EMBEDDING, *TINY]
    run = run_cli(comfyui_path, *args)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "restored 4, skipped 0 (output exists; --overwrite to redo), failed 1" in run.stderr
    assert f"FAILED {src / 'broken.png'}: not a readable image" in run.stderr
    expected = {"beach.png": (54, 72), "sub/dog.png": (72, 54), "scan16.png": (54, 72), "scan48.png": (54, 72)}
    for rel, hw in expected.items():
        img = np.asarray(Image.open(out_dir / rel))
        assert img.shape == (*hw, 3) and img.std() > 0, rel
        side = json.loads((out_dir / rel).with_suffix(".json").read_text())
        assert side["settings"]["seed"] == 3 and side["settings"]["steps"] == 2
        assert side["workflow"] == "workflows/dpir_restore.json"
        assert {n["class_type"] for n in side["prompt"].values()} >= {"DPIRModelLoader", "PreviewImage"}
        model_hash = side["models"]["dpir_transformer"]["sha256"]["diffusion_pytorch_model.safetensors"]
        real = hashlib.sha256((root / "dpir" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
        assert model_hash == real.hexdigest()
        assert side["models"]["t5_embedding"]["name"] == PROMPT_EMBEDDING
        assert side["pack_version"] == tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert not (out_dir / "broken.png").exists() and not list(out_dir.rglob("*.part"))
    assert "5/5" not in run.stderr and "4/4 [" in run.stderr  # one progress bar over the readable images
    # a second run finds every output and starts no ComfyUI for them
    again = run_cli(comfyui_path, *args)
    assert again.returncode == 1 and "restored 0, skipped 4" in again.stderr, again.stderr[-2000:]
    assert "starting ComfyUI" not in again.stderr


def test_one_command_from_no_models_to_a_restored_photo(comfyui_path, tmp_path):
    with FakeHub() as hub:
        publish(hub, tmp_path / "hub")
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": ""}
        photo = write_photo(tmp_path / "in" / "photo.png", 80, 60)
        base = tmp_path / "base"
        run = run_cli(comfyui_path, photo, "-o", tmp_path / "out", "--download", "--base-directory", base,
                      "--t5-embedding", "t5_prompt_embedding.safetensors", *TINY, env=env)
        assert run.returncode == 0, run.stderr[-4000:]
        assert "restored 1, skipped 0" in run.stderr
        assert "sd3_vae: sd3_vae.safetensors in models/vae/ (from DehongKong/dpir" in run.stderr
        assert (base / "models" / "dpir" / "transformer" / "config.json").is_file()
        img = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
        assert img.shape == (54, 72, 3)
        assert hub.downloads()


def test_subgraph_workflow_gives_the_large_workflows_image(comfyui_path, models, tmp_path):
    """--workflow block runs workflows/subgraphs/dpir_restore_block.json (one 'DPIR Restore' subgraph node, its
    knobs promoted): the pack's converter expands the subgraph, and the image equals the one of the same chain
    without a subgraph (--workflow large) at the same settings."""
    _, yaml = models
    photo = write_photo(tmp_path / "photo.png", 80, 60, seed=5)
    images = {}
    for workflow in ("block", "large"):
        out = tmp_path / workflow / "photo.png"
        run = run_cli(comfyui_path, photo, "-o", out, "--workflow", workflow, "--base-directory", tmp_path / "base",
                      "--extra-model-paths", yaml, "--t5-embedding", PROMPT_EMBEDDING, *TINY)
        assert run.returncode == 0, run.stderr[-3000:]
        side = json.loads(out.with_suffix(".json").read_text())
        images[workflow] = np.asarray(Image.open(out))
        if workflow == "block":
            assert side["workflow"] == "workflows/subgraphs/dpir_restore_block.json"
            inner = {k: v["class_type"] for k, v in side["prompt"].items() if ":" in k}  # "<subgraph node>:<inner>"
            assert {"DPIRTiledPrompt", "DPIRSamplerPatch", "DPIRColourFix"} <= set(inner.values())
    assert images["block"].shape == (54, 72, 3) and images["block"].std() > 0
    assert np.array_equal(images["block"], images["large"])


def test_unreadable_inputs_alone_start_nothing(comfyui_path, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    run = run_cli(comfyui_path, tmp_path / "bad.jpg", tmp_path / "missing.png", "-o", tmp_path / "out")
    assert run.returncode == 1 and "failed 2" in run.stderr and "starting ComfyUI" not in run.stderr
    assert "no such file" in run.stderr


def _cli_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpir_cli", PACK_ROOT / "cli.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    import io

    path = write_photo(tmp_path / "scan16.png", 40, 30, seed=5, mode="I;16")
    grey16 = np.asarray(Image.open(path), dtype=np.float64)
    data, name, size = _cli_module().prepare_image(path)
    rgb = np.asarray(Image.open(io.BytesIO(data)))
    assert name == "scan16.png" and size == (40, 30) and rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[..., 0] - grey16 / 65535 * 255).max() <= 0.5 + 1e-9
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.std() > 10  # grey with detail, not a flat white


@pytest.mark.parametrize("workflow", ["restore", "large", "block"])
def test_the_prompt_has_one_image_output_the_restored_photo(workflow, object_info):
    """The CLI saves the first image ComfyUI returns, so the prompt must hold exactly one image output, the
    colour-fixed result: the large workflow's tile-overlay preview once came back first (in whichever order
    the server listed its outputs) and was saved as the restored photo."""
    from argparse import Namespace

    cli = _cli_module()
    args = Namespace(scale=None, long_side=72, steps=2, cfg=1.0, seed=3, prompt="a photo", t5_embedding=None)
    api = cli.build_prompt(cli.shipped_workflow(cli.WORKFLOWS[workflow]), object_info, args, "photo.png", {})
    images = [nid for nid, n in api.items() if "images" in n["inputs"] and object_info[n["class_type"]]["output_node"]]
    assert images == cli.result_nodes(api) and len(images) == 1, images
    source = api[images[0]]["inputs"]["images"][0]
    assert api[source]["class_type"] == "DPIRColourFix"
