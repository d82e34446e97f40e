"""One-pass tiled VAE (nodes/tiled_vae.py, models/tiled_vae.py) on the real SD3 VAE architecture with random
weights, loaded by ComfyUI: seams against an untiled pass on the same input, the choice by memory, and the nodes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from .comfy_harness import pack_module
from .dpir_env import PHOTO, api_of, node_id, saved_images, write_photo

# one pass vs the untiled decode, 384×512 px in 256 px tiles with 64 px overlap (6 tiles), random weights:
# measured max 0.339, mean 0.0456, 24.1 dB (docs/large-images.md)
DECODE_PSNR_DB = 22.0
DECODE_MEAN = 0.06
# encode, 256×384 px in 128 px tiles with 64 px overlap: relative L2 of the latent (the tiny VAE's 15-tile encode
# measured 0.486; misplaced or unnormalised tiles give > 1)
ENCODE_REL = 0.8
# the large workflow (tiny DiT, SD3 VAE architecture), 1088×816 px after the colour fix: one pass in 1024 px tiles vs
# the whole image and vs the old three tilings measured 39.1 / 39.1 dB; the shipped 'auto' vs the old: 42.2 dB as the
# whole image, 36.5 dB in the CPU's 2 × 2 windows of at most 768 px
WORKFLOW_PSNR_DB = 35.0


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
    tvae = pack_module("tiled_vae")
    z = smooth_latent(48, 64)
    whole = vae.decode(z)
    tiled, choice = tvae.decode(vae, z, "on", tile_px=256, overlap_px=64)
    assert choice.plan.count == 6 and tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    print(f"decode: max {float(diff.max()):.4f} mean {float(diff.mean()):.5f} PSNR {psnr(tiled, whole):.1f} dB")
    assert psnr(tiled, whole) > DECODE_PSNR_DB and float(diff.mean()) < DECODE_MEAN


@torch.inference_mode()
def test_one_pass_encode_seams_and_the_choice_by_memory(pack_nodes, vae):
    tvae = pack_module("tiled_vae")
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


def test_large_workflow_one_pass_decode_against_three_tilings(dpir_server, object_info, workflow_api, tmp_path):
    """The shipped large workflow decodes with DPIR VAE Decode; before, it used the core 'VAE Decode (Tiled)'
    (three tilings averaged, 1024 px tiles, 64 px overlap). One prompt, one sampled latent of a 1088×816 px result
    (tiny DiT, SD3 VAE architecture), each decode followed by the workflow's colour fix: the shipped node ('auto':
    on the CPU windows of at most 768 px, 2 × 2 here; on a GPU the whole image when it fits), the same
    forced to 1024 px tiles ('on': 2 × 1 windows) and the old core node. The one pass stays within the stated bound of the untiled image and of the old output."""
    dpir_server.add_input(write_photo(tmp_path / PHOTO))
    api = api_of("dpir_restore_large", dpir_server, object_info, workflow_api,
                 DPIRRobustVAEEncode={"resize": "long side", "long_side": 1088}, DPIRSamplerPatch={"steps": 2})
    decode, save = node_id(api, "DPIRVAEDecode"), node_id(api, "SaveImage")
    assert api[decode]["inputs"]["tiled_vae"] == "auto"
    fix = api[node_id(api, "DPIRColourFix")]
    variants = {"on": ("DPIRVAEDecode", {"tiled_vae": "on"}),
                "three": ("VAEDecodeTiled", {"tile_size": 1024, "overlap": 64, "temporal_size": 64,
                                             "temporal_overlap": 8})}
    for i, (cls, inputs) in enumerate(variants.values()):
        api[f"{900 + i}"] = {"class_type": cls, "inputs": {**inputs, "samples": api[decode]["inputs"]["samples"],
                                                           "vae": api[decode]["inputs"]["vae"]}}
        api[f"{910 + i}"] = {"class_type": "DPIRColourFix", "inputs": {**fix["inputs"], "image": [f"{900 + i}", 0]}}
        api[f"{920 + i}"] = {"class_type": "SaveImage",
                             "inputs": {"images": [f"{910 + i}", 0], "filename_prefix": f"decode_{i}"}}
    entry = dpir_server.run(api, timeout=900)

    def image(nid):
        return saved_images(dpir_server, entry, node_id=nid)[0].astype(np.float64) / 255

    out = {"shipped": image(save), **{name: image(f"{920 + i}") for i, name in enumerate(variants)}}
    assert out["shipped"].shape == (816, 1088, 3)
    print(f"shipped decode node: {entry['outputs'][decode]['text'][0]}")
    assert entry["outputs"]["900"]["text"][0].startswith("VAE decode: 2 tiles")
    for a, b in (("on", "shipped"), ("on", "three"), ("shipped", "three")):
        db = psnr(out[a], out[b])
        print(f"large workflow, {a} vs {b}: PSNR {db:.1f} dB, max abs {np.abs(out[a] - out[b]).max():.3f}")
        assert db > WORKFLOW_PSNR_DB, (a, b, db)  # on vs shipped: inf on the CPU, the same windows
