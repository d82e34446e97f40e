"""The headless CLI (cli.py): runs dpir_restore in-process in the host ComfyUI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tiny_models as tm
from host.comfy_harness import PACK_ROOT

SPEC = tm.TinySpec()


def run_cli(comfyui_path, *args, timeout=600):
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(PACK_ROOT / "cli.py"), *map(str, args), "--cpu"], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((64, 48), Image.BILINEAR).save(path)
    return path


def test_missing_models_are_listed_with_their_folders(comfyui_path, photo, tmp_path):
    if (comfyui_path / "models" / "dpir").exists():
        pytest.skip("this host has a models/dpir folder: the missing-model message cannot be checked here")
    out = run_cli(comfyui_path, photo, "-o", tmp_path / "out.png")
    assert out.returncode == 2, out.stderr[-2000:]
    for needle in ("transformer/diffusion_pytorch_model.safetensors' is missing", "models/dpir/",
                   "DehongKong/dpir", "sd3_vae.safetensors' is missing", "models/vae/",
                   "clip_vit_b32.safetensors' is missing", "models/clip_vision/", "t5xxl_fp16.safetensors"):
        assert needle in out.stderr
    assert not (tmp_path / "out.png").exists()


def test_cli_restores_with_tiny_models(comfyui_path, photo, tmp_path):
    root = tmp_path / "models"
    tm.write_transformer_folder(root / "dpir" / "transformer", SPEC)
    tm.write_vae_folder(root / "dpir" / "robust_vae", SPEC, robust=True, full=True)
    tm.write_t5_embedding(root / "dpir" / "prompt.safetensors", SPEC)
    tm.write_vae_file(root / "vae" / "sd3_vae.safetensors", SPEC, full=True)
    for which, name in ((1, "clip_vit_b32"), (2, "clip_vision_g")):
        tm.write_clip_vision_file(root / "clip_vision" / f"{name}.safetensors", SPEC, which=which)
        (root / "clip_vision" / f"{name}.json").write_text(tm.clip_vision_config(SPEC, which).to_json_string())
    yaml = tmp_path / "paths.yaml"
    yaml.write_text(json.dumps({"t": {"base_path": str(root), "dpir": "dpir", "vae": "vae",
                                      "clip_vision": "clip_vision"}}))
    out_png = tmp_path / "restored.png"
    out = run_cli(comfyui_path, photo, "-o", out_png, "--extra-model-paths", yaml, "--t5-embedding",
                  "prompt.safetensors", "--long-side", "96", "--steps", "2", "--seed", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    img = np.asarray(Image.open(out_png))
    assert img.shape == (72, 96, 3) and img.std() > 0
