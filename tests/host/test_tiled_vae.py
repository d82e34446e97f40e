"""One-pass tiled VAE (nodes/tiled_vae.py, models/tiled_vae.py) on the real SD3 VAE architecture with random
weights, loaded by ComfyUI: seams against an untiled pass on the same input, the choice by memory, and the nodes."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from .comfy_harness import PACK_NAME

# one pass vs the untiled decode, 384×512 px in 256 px tiles with 64 px overlap (6 tiles), random weights:
# measured max 0.339, mean 0.0456, 24.1 dB (docs/large-images.md)
DECODE_PSNR_DB = 22.0
DECODE_MEAN = 0.06
# encode, 256×384 px in 128 px tiles with 64 px overlap: relative L2 of the latent (the tiny VAE's 15-tile encode
# measured 0.486; misplaced or unnormalised tiles give > 1)
ENCODE_REL = 0.8


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


@torch.inference_mode()
def test_one_pass_decode_seams_against_the_whole_image(pack_nodes, vae):
    tvae = pack_module("nodes.tiled_vae")
    z = smooth_latent(48, 64)
    whole = vae.decode(z)
    tiled, choice = tvae.decode(vae, z, "on", tile_px=256, overlap_px=64)
    assert choice.plan.count == 6 and tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    print(f"decode: max {float(diff.max()):.4f} mean {float(diff.mean()):.5f} PSNR {psnr(tiled, whole):.1f} dB")
    assert psnr(tiled, whole) > DECODE_PSNR_DB and float(diff.mean()) < DECODE_MEAN


@torch.inference_mode()
def test_one_pass_encode_seams_and_the_choice_by_memory(pack_nodes, vae):
    tvae = pack_module("nodes.tiled_vae")
    x = torch.rand(1, 256, 384, 3, generator=torch.Generator().manual_seed(2))
    whole = vae.encode(x)
    tiled, choice = tvae.encode(vae, x, "on", tile_px=128, overlap_px=64)
    assert choice.plan.count > 1 and tiled.shape == whole.shape
    rel = float((tiled - whole).norm() / whole.norm())
    print(f"encode: relative L2 {rel:.4f}, max {float((tiled - whole).abs().max()):.4f}")
    assert rel < ENCODE_REL
    # auto at this size: ComfyUI's estimate fits in the free RAM, so one pass over the whole image, exactly
    # ComfyUI's own encode; the DPIR VAE Decode node says what it chose
    auto, choice = tvae.encode(vae, x, "auto")
    assert not choice.plan.tiled and "whole image" in choice.text and choice.free > choice.estimate
    torch.testing.assert_close(auto, whole, rtol=0, atol=0)
    out = pack_nodes["DPIRVAEDecode"]().decode({"samples": whole[:, :, :8, :8]}, vae, "auto")
    torch.testing.assert_close(out["result"][0], vae.decode(whole[:, :, :8, :8]), rtol=0, atol=0)
    assert out["ui"]["text"][0].startswith("VAE decode: whole image")
