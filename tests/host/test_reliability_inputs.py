"""Reliability, part 1: unusual input images, through a real ComfyUI server (CPU, tiny models) and in-process.

Through the server (workflows/dpir_restore.json, 2 steps; the successful cases share one prompt, one chain
of nodes per image, so the loaders run once): an RGBA PNG joined with its alpha again (a real 4-channel
IMAGE), greyscale, 1×1, 17×31, 16×4000 down-scaled, an 8K photo down-scaled, a batch of three (greyscale,
16-bit greyscale and 16-bit RGB PNGs; each keeps to itself). Then one prompt each: a thin image at full size
tiled (exact size) and a latent wider than the position table untiled (a clear error), and NaN/Inf
latents and images (refused, nothing saved).

An 8K image is not restored at full size on the CPU (hours with the full-size VAE). Its size handling is
checked in-process on a cheap path: the robust encode with a VAE stub that records the calls (×4 Lanczos
upscale to 7680×4324, tiled VAE chosen, padding, exact crop) and the tile plan of the 8K latent.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from host.comfy_harness import PACK_NAME, ExecutionFailed
from host.dpir_env import SPEC, api_of, fork, node_id, saved_images, write_photo

STEPS = 2
KEEP = {"resize": "keep size"}
# name: (PNG mode, width, height, DPIRRobustVAEEncode settings, expected output (height, width))
IMAGES = {
    "rgba.png": ("RGBA", 24, 20, KEEP, (20, 24)),  # loaded, then joined with its alpha: a 4-channel IMAGE
    "grey.png": ("L", 24, 20, KEEP, (20, 24)),
    "one.png": ("RGB", 1, 1, KEEP, (1, 1)),
    "odd.png": ("RGB", 31, 17, KEEP, (17, 31)),
    "thin.png": ("RGB", 4000, 16, {"resize": "long side", "long_side": 64}, (1, 64)),
    "8k.png": ("RGB", 7680, 4320, {"resize": "long side", "long_side": 64}, (36, 64)),
    # batched with grey.png (same size): each restores to its exact size, the first as when alone
    "grey16.png": ("I;16", 24, 20, KEEP, None),
    "rgb16.png": ("RGB;16", 24, 20, KEEP, None),
    "thin_full.png": ("RGB", 1600, 16, KEEP, None),  # wider than the tiny model's position table (1536 px)
}
CHAINS = [name for name, spec in IMAGES.items() if spec[4] is not None] + ["batch"]


@pytest.fixture(scope="module")
def server(dpir_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    for i, (name, (mode, w, h, _, _)) in enumerate(IMAGES.items()):
        dpir_server.add_input(write_photo(folder / name, w, h, seed=i, mode=mode))
    for name, value in (("nan.latent", float("nan")), ("inf.latent", float("inf"))):
        z = torch.randn(1, 16, 4, 4)
        z[0, :, 1, 2] = value  # one bad pixel is enough
        save_file({"latent_tensor": z, "latent_format_version_0": torch.tensor([])}, str(folder / name))
        dpir_server.add_input(folder / name)
    return dpir_server


def restore_api(server, object_info, workflow_api, **overrides):
    overrides.setdefault("DPIRSamplerPatch", {"steps": STEPS})
    return api_of("dpir_restore", server, object_info, workflow_api, **overrides)


def output_files(server) -> set:
    return {p.name for p in server.output_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def restored(server, object_info, workflow_api):
    """One prompt, one chain of nodes per case (loaders shared); returns {case: saved images}."""
    api = restore_api(server, object_info, workflow_api)
    load, encode, save = (node_id(api, t) for t in ("LoadImage", "DPIRRobustVAEEncode", "SaveImage"))
    variants = []
    for case in CHAINS:
        name = "grey.png" if case == "batch" else case
        variants.append({"LoadImage": {"image": name}, "DPIRRobustVAEEncode": IMAGES[name][3],
                         "SaveImage": {"filename_prefix": f"inputs_{case.replace('.', '_')}"}})
    api, ids = fork(api, load, variants)
    rgba, batch = ids[CHAINS.index("rgba.png")], ids[CHAINS.index("batch")]
    # a real 4-channel IMAGE: Load Image's RGB and its alpha mask joined again
    api["900"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": [rgba[load], 0], "alpha": [rgba[load], 1]}}
    api[rgba[encode]]["inputs"]["image"] = ["900", 0]
    # a batch of three: the greyscale photo, a 16-bit greyscale and a 16-bit RGB PNG
    api["901"] = {"class_type": "LoadImage", "inputs": {"image": "grey16.png"}}
    api["902"] = {"class_type": "LoadImage", "inputs": {"image": "rgb16.png"}}
    api["903"] = {"class_type": "ImageBatch", "inputs": {"image1": [batch[load], 0], "image2": ["901", 0]}}
    api["904"] = {"class_type": "ImageBatch", "inputs": {"image1": ["903", 0], "image2": ["902", 0]}}
    api[batch[encode]]["inputs"]["image"] = ["904", 0]
    entry = server.run(api, timeout=900)
    return {case: saved_images(server, entry, node_id=ids[i][save]) for i, case in enumerate(CHAINS)}


@pytest.mark.parametrize("case", [n for n in CHAINS if n != "batch"])
def test_image_restores_to_its_exact_size(restored, case):
    (image,) = restored[case]
    assert image.shape == (*IMAGES[case][4], 3)
    assert image.dtype == np.uint8


def test_batch_of_three_keeps_each_image_to_itself(restored):
    batch, (solo,) = restored["batch"], restored["grey.png"]
    assert len(batch) == 3 and all(b.shape == (20, 24, 3) for b in batch)
    # the batch's noise starts with the single image's noise (one seed), so image 0 restores as when alone
    assert np.abs(batch[0].astype(int) - solo.astype(int)).max() <= 2
    assert np.abs(batch[1].astype(int) - batch[0].astype(int)).max() > 10
    assert np.abs(batch[2].astype(int) - batch[1].astype(int)).max() > 10


def test_latent_wider_than_the_position_table_untiled_is_a_clear_error(server, object_info, workflow_api):
    """A 16×4000 px image at full size, untiled: its latent (2×500) is built directly, sparing the VAE."""
    api = restore_api(server, object_info, workflow_api, LoadImage={"image": "one.png"})
    api["960"] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 4000, "height": 16, "batch_size": 1}}
    api[node_id(api, "DPIRApplyLQCondition")]["inputs"]["lq_latent"] = ["960", 0]
    api[node_id(api, "SamplerCustomAdvanced")]["inputs"]["latent_image"] = ["960", 0]
    before = output_files(server)
    with pytest.raises(ExecutionFailed) as e:
        server.run(api, timeout=300)
    text = str(e.value)
    assert "(SamplerCustomAdvanced)" in text and "DPIRInputError" in text
    assert "4000×16 px (250×1 tokens)" in text and "covers at most 96×96 tokens" in text
    assert "dpir_restore_large" in text
    assert output_files(server) == before


def test_thin_image_at_full_size_tiled_keeps_its_exact_size(server, object_info, workflow_api):
    api = api_of("dpir_restore_large", server, object_info, workflow_api, LoadImage={"image": "thin_full.png"},
                 DPIRRobustVAEEncode=KEEP, DPIRSamplerPatch={"steps": STEPS},
                 DPIRTiledPrompt={"tile_size": 1024, "tile_overlap": 128, "seam_shift": False})
    assert api[node_id(api, "DPIRVAEDecode")]["inputs"]["tiled_vae"] == "auto"  # 768 px windows on the CPU
    (image,) = saved_images(server, server.run(api, timeout=900))
    assert image.shape == (16, 1600, 3) and image.std() > 0


def _nan_image_api(api, latent):
    """Load Image replaced by a decoded .latent file: an IMAGE holding NaN/Inf."""
    load, encode = node_id(api, "LoadImage"), node_id(api, "DPIRRobustVAEEncode")
    vae = api[encode]["inputs"]["vae"]
    del api[load]
    api["950"] = {"class_type": "LoadLatent", "inputs": {"latent": latent}}
    api["951"] = {"class_type": "VAEDecode", "inputs": {"samples": ["950", 0], "vae": vae}}
    api[encode]["inputs"]["image"] = ["951", 0]
    return api


@pytest.mark.parametrize("where,latent,node,message", [
    ("image", "nan.latent", "DPIRRobustVAEEncode", "the LQ image contains NaN or infinite values"),
    ("lq_latent", "inf.latent", "DPIRApplyLQCondition", "'lq_latent' contains NaN or infinite values"),
    ("sampled latent", "nan.latent", "SamplerCustomAdvanced", "the model's output contains NaN or infinite"),
])
def test_nan_and_inf_never_reach_the_output(server, object_info, workflow_api, where, latent, node, message):
    api = restore_api(server, object_info, workflow_api, LoadImage={"image": "one.png"},
                      DPIRRobustVAEEncode={"resize": "long side", "long_side": 32})  # latent 4×4, as the files
    if where == "image":
        api = _nan_image_api(api, latent)
    else:
        api["950"] = {"class_type": "LoadLatent", "inputs": {"latent": latent}}
        target = node_id(api, "DPIRApplyLQCondition" if where == "lq_latent" else "SamplerCustomAdvanced")
        api[target]["inputs"]["lq_latent" if where == "lq_latent" else "latent_image"] = ["950", 0]
    before = output_files(server)
    with pytest.raises(ExecutionFailed) as e:
        server.run(api, timeout=300)
    assert f"({node})" in str(e.value) and message in str(e.value) and "DPIRInputError" in str(e.value)
    assert output_files(server) == before  # nothing half-done was saved


# ------------------------------------------------------------------ in-process: cheap paths


def pack_module(name):
    """A module of the pack as ComfyUI loaded it (its error classes are not dpir_pack's)."""
    return sys.modules[f"{PACK_NAME}.{name}"]


def test_image_layouts_and_non_finite_values(pack_nodes):
    DPIRInputError = pack_module("models.errors").DPIRInputError
    to_bchw = pack_module("nodes.images").to_bchw
    rgb = torch.rand(2, 5, 7, 3)
    for channels in (1, 2, 3, 4):
        x = torch.rand(2, 5, 7, channels)
        out = to_bchw(x)
        assert out.shape == (2, 3, 5, 7)
        assert torch.equal(out[:, 0], x[..., 0]) and torch.equal(out[:, 2], x[..., 0 if channels < 3 else 2])
    assert to_bchw(rgb[0]).shape == (1, 3, 5, 7)  # a single image without batch axis
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = rgb.clone()
        x[1, 4, 6, 2] = bad
        with pytest.raises(DPIRInputError, match="NaN or infinite"):
            to_bchw(x)
    for shape in ((2, 0, 7, 3), (2, 5, 7, 5), (5, 7)):
        with pytest.raises(DPIRInputError, match="ComfyUI IMAGE"):
            to_bchw(torch.rand(shape))
    fixed = pack_nodes["DPIRColourFix"]().fix(torch.rand(1, 16, 16, 3) * 3 - 1, torch.rand(1, 13, 11, 3), "wavelet")
    out = fixed["result"][0] if isinstance(fixed, dict) else fixed[0]
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 and out.shape == (1, 13, 11, 3)


def test_colour_fix_node_streams_with_the_same_result(pack_nodes):
    """DPIR Colour Fix's wavelet fix reads strips of its input IMAGEs and writes its output IMAGE directly (no
    image-size copies: 0.8 GB each at 8K): the result is the fix on clamped (B, 3, H, W) copies, to the bit, for
    RGB, greyscale and RGBA inputs, the encoder's padding cropped; the inputs are left alone. The preview's PNG
    bytes, made a strip at a time, are those of the whole-image conversion."""
    to_bchw, to_bhwc = pack_module("nodes.images").to_bchw, pack_module("nodes.images").to_bhwc
    colour_fix = pack_module("models.colour_fix").colour_fix
    rgb8 = pack_module("nodes.web_ui")._rgb8
    node = pack_nodes["DPIRColourFix"]()
    torch.manual_seed(0)
    for channels in (1, 3, 4):
        image, lq = torch.rand(2, 64, 48, channels) * 1.2 - 0.1, torch.rand(1, 53, 41, 3)
        before = image.clone()
        (got,) = node.fix(image, lq, "wavelet")
        want = to_bhwc(colour_fix(to_bchw(image)[:, :, :53, :41], to_bchw(lq), "wavelet"))
        assert got.shape == (2, 53, 41, 3) and got.is_contiguous() and torch.equal(got, want), channels
        assert torch.equal(image, before)
        for method in ("adain", "none"):
            assert torch.equal(node.fix(image, lq, method)[0],
                               to_bhwc(colour_fix(to_bchw(image)[:, :, :53, :41], to_bchw(lq), method)))
        img = image[0]
        old = (img[..., :3].clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
        old = old.repeat(3, axis=-1) if old.shape[-1] == 1 else old
        assert np.array_equal(rgb8(img, strip_values=7 * 48 * 3), old), channels


class RecordingVAE:
    """A 16-channel VAE that records the calls the nodes make and returns zeros; ComfyUI's SD-family memory estimates
    (comfy/sd.py) and a real ModelPatcher, so the nodes choose whole image or tiles as with a real VAE."""
    latent_channels = 16
    downscale_ratio = 8
    vae_dtype = torch.float32

    def __init__(self):
        import comfy.model_patcher

        self.calls, self.device = [], torch.device("cpu")
        self.patcher = comfy.model_patcher.ModelPatcher(torch.nn.Identity(), self.device, self.device)

    def memory_used_encode(self, shape, dtype):
        return 1767 * shape[2] * shape[3] * 4

    def memory_used_decode(self, shape, dtype):
        return 2178 * shape[2] * shape[3] * 64 * 4

    def encode(self, x):
        self.calls.append(("encode", tuple(x.shape)))
        return torch.zeros(x.shape[0], 16, x.shape[1] // 8, x.shape[2] // 8)

    def decode(self, z):
        self.calls.append(("decode", tuple(z.shape)))
        return torch.zeros(z.shape[0], z.shape[2] * 8, z.shape[3] * 8, 3)


def test_8k_size_handling_and_tile_plan_on_a_cheap_path(pack_nodes):
    DPIRInputError = pack_module("models.errors").DPIRInputError
    tiled = pack_module("nodes.tiled_sampling")
    encode = pack_nodes["DPIRRobustVAEEncode"]().encode
    decode = pack_nodes["DPIRRobustVAEDecode"]().decode
    # ×4 of a 1920×1081 photo (odd height): 7680×4324 px, padded to 7680×4336 for the VAE, cropped back
    vae = RecordingVAE()
    photo = torch.rand(1, 1081, 1920, 3)
    out = encode(photo, vae, "upscale factor", 1024, 4.0, "auto")
    latent, lq = out["result"]
    decoded = decode(latent, vae, "auto")["result"][0]
    assert lq.shape == (1, 4324, 7680, 3) and decoded.shape == (1, 4324, 7680, 3)
    assert latent["samples"].shape == (1, 16, 542, 960)
    # auto: ComfyUI's estimate for 8K (235 GB encode, 290 GB decode in fp32) exceeds any RAM here: tiles, each region
    # once (no three tilings), and the node says so
    encodes = [c[1] for c in vae.calls if c[0] == "encode"]
    decodes = [c[1] for c in vae.calls if c[0] == "decode"]
    assert len(encodes) > 1 and len(decodes) > 1 and len(vae.calls) == len(encodes) + len(decodes)
    assert sum(s[1] * s[2] for s in encodes) < 1.5 * 4336 * 7680
    assert "tiles" in out["ui"]["text"][0] and "estimate" in out["ui"]["text"][0]
    assert torch.isfinite(lq).all() and lq.min() >= 0 and lq.max() <= 1
    # 'off' is respected; the untiled path at a small size is not tiled
    small = RecordingVAE()
    small_out = encode(torch.rand(1, 30, 40, 3), small, "keep size", 1024, 1.0, "auto")
    decode(small_out["result"][0], small, "auto")
    assert [c[0] for c in small.calls] == ["encode", "decode"] and "whole image" in small_out["ui"]["text"][0]
    off = RecordingVAE()
    decode(encode(photo, off, "upscale factor", 1024, 4.0, "off")["result"][0], off, "off")
    assert [c[0] for c in off.calls] == ["encode", "decode"]
    # beyond 16384² the node refuses before allocating anything
    with pytest.raises(DPIRInputError, match="larger than 16384"):
        encode(torch.rand(1, 1100, 1100, 3), RecordingVAE(), "upscale factor", 1024, 16.0, "auto")
    # the tile plan of that latent (1024 px tiles, 128 px overlap, seam shifts): covers it, token aligned,
    # every tile within the real SD3-medium position table (192 tokens)
    h, w = latent["samples"].shape[-2:]
    tiles = tiled.TileSet(h, w, 128, 16, [0, 32, 64, 96], 1)
    for plan in tiles.plans:
        cover = torch.zeros(h, w, dtype=torch.int32)
        for t in plan:
            assert t.top % 2 == 0 and t.left % 2 == 0 and 0 < t.height <= 128 and 0 < t.width <= 128
            assert t.bottom <= h and t.right <= w
            cover[t.top:t.bottom, t.left:t.right] += 1
        assert cover.min() >= 1
    assert tiles.count == 5 * 9


class SmallEstimateVAE(RecordingVAE):
    """ComfyUI's estimates of a VAE whose whole image always fits in the free RAM."""

    def memory_used_encode(self, shape, dtype):
        return shape[2] * shape[3]

    def memory_used_decode(self, shape, dtype):
        return shape[2] * shape[3] * 64


def test_auto_windows_stop_at_768_px_on_the_cpu(pack_nodes):
    """On the CPU ComfyUI's VAE attention fills the free RAM with a score matrix that grows with the square of the
    window's area, which its estimate does not count: 'auto' cuts windows of at most 768 px there even when the
    estimate says the whole image fits, and says why; up to 768 px the whole image is one pass."""
    tvae = pack_module("nodes.tiled_vae")
    vae = SmallEstimateVAE()
    latent, choice = tvae.encode(vae, torch.rand(1, 2048, 1536, 3), "auto")
    assert latent.shape == (1, 16, 256, 192)
    shapes = [c[1] for c in vae.calls]
    assert len(shapes) == choice.plan.count == 9 and max(max(s[1], s[2]) for s in shapes) <= 768
    assert "at most 768 px on the CPU" in choice.text and "estimate" not in choice.text
    vae.calls.clear()
    _, choice = tvae.decode(vae, torch.zeros(1, 16, 96, 72), "auto")
    assert vae.calls == [("decode", (1, 16, 96, 72))] and "whole image" in choice.text
    # an estimate that exceeds any RAM for the whole 8K latent (1.1 TB) and fits for a 768 px tile (85 MB), as
    # the quadratic term would: both reasons are given, whatever this machine has free; 12 × 12 windows of
    # 744 px, as near the 2K image's 728 px as the 8 px latent grid allows
    vae = QuadraticEstimateVAE()
    _, choice = tvae.decode(vae, torch.zeros(1, 16, 1024, 1024), "auto")
    assert choice.tile_px == 768 and choice.plan.count == 144
    assert "estimate" in choice.text and "at most 768 px on the CPU" in choice.text


class QuadraticEstimateVAE(RecordingVAE):
    def memory_used_decode(self, shape, dtype):
        return (shape[2] * shape[3]) ** 2
