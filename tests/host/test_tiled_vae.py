"""One-pass tiled VAE (nodes/tiled_vae.py, models/tiled_vae.py) on the real SD3 VAE architecture with random
weights, loaded by ComfyUI: seams against an untiled pass on the same input, the choice by memory, and the nodes."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from .comfy_harness import PACK_NAME

# seam bounds, decoded/encoded in tiles vs the whole image (random weights; measured figures in docs/large-images.md)
DECODE_PSNR_DB = 30.0
ENCODE_REL = 0.1


def pack_module(name):
    return sys.modules[f"{PACK_NAME}.{name}"]


def psnr(a, b) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@pytest.fixture(scope="module")
def vae(pack_nodes):
    import comfy.sd
    import comfy.utils
    import folder_paths

    stock = comfy.sd.VAE(sd=comfy.utils.load_torch_file(folder_paths.get_full_path("vae", "sd3_vae.safetensors")))
    return pack_nodes["DPIRRobustVAELoader"]().load("robust_vae/diffusion_pytorch_model.safetensors", vae=stock)[0]


def smooth_latent(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, 16, h // 4, w // 4, generator=g), size=(h, w),
                                           mode="bicubic")


def test_one_pass_decode_seams_against_the_whole_image(pack_nodes, vae):
    tvae = pack_module("nodes.tiled_vae")
    z = smooth_latent(48, 64)
    whole = vae.decode(z)
    tiled, choice = tvae.decode(vae, z, "on", tile_px=256, overlap_px=64)
    assert choice.plan.count == 6 and tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    print(f"decode: max {float(diff.max()):.4f} mean {float(diff.mean()):.5f} PSNR {psnr(tiled, whole):.1f} dB")
    assert psnr(tiled, whole) > DECODE_PSNR_DB
    # without the feathered blend (hard cut in the middle of the overlap) the seams are worse
    assert float(diff.mean()) < 0.05
