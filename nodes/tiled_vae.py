"""One-pass tiled VAE for ComfyUI VAEs, tiled only when ComfyUI's own memory estimate says the whole image does not fit.

The choice: the VAE's ``memory_used_encode`` / ``memory_used_decode`` for the whole batch against
``model_management.get_free_memory`` of the VAE's device (VRAM on CUDA, RAM on the CPU) once the VAE's weights
are loaded, times ``MARGIN``. Above it the image is cut into the largest square tiles whose estimate fits
(``models.tiled_vae.largest_tile``), each encoded/decoded once with ``VAE.encode``/``VAE.decode`` and blended with
feathered overlaps (``models.tiled_vae``). ``VAEChoice.text`` says what was chosen and why.

On the CPU 'auto' tiles are also at most ``CPU_TILE`` (768 px): ComfyUI's CPU VAE attention
(``slice_attention``) takes one slice whenever the whole score matrix fits in the free RAM, so a window of s px
holds about 2.5 × (s/8)⁴ × 4 bytes (10.7 GB at 1600 px, 2.7 GB at 1024 px, 0.85 GB at 768 px) that ComfyUI's
linear estimate does not count. Larger windows are not faster on the CPU (convolutions dominate and the
attention's share grows with the window), and with 768 px the windows stay 728–744 px from 2K to 8K, so the
VAE's peak does not grow with the photo (docs/large-images.md).
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import torch

import comfy.model_management
import comfy.utils

from ..models import tiled_vae as tv
from ..models.errors import DPIRInputError

TILED_VAE = ("auto", "on", "off")
MARGIN = 0.8  # of the free memory: ComfyUI's estimate is per image; leave room for the output and the blend
OVERLAP = 64  # px between neighbouring tiles (8 latent px for SD3): the ramp of the feathered blend
TILE = 1024  # px, tiles for 'on'
CPU_TILE = 768  # px, the largest 'auto' tile on the CPU (see above)
TOOLTIP = ("'auto': tile only when ComfyUI's memory estimate for the whole image exceeds the free memory of the VAE's "
           "device (VRAM on a GPU, RAM on the CPU), in the largest tiles that fit (on the CPU at most {cpu_tile} px, "
           "which keeps its memory flat from 2K to 8K); each region is processed once and "
           "tiles blend over {overlap} px. 'on': {tile} px tiles. 'off': whole image. The choice made is logged, "
           "shown on the node after a run and in the tile overlay of 'DPIR Tiled Global-Local Prompt'.")
TOOLTIP = TOOLTIP.format(overlap=OVERLAP, tile=TILE, cpu_tile=CPU_TILE)


class VAEChoice(NamedTuple):
    plan: tv.Plan
    tile_px: int | None  # None: whole image
    estimate: float  # bytes, ComfyUI's estimate for the whole image
    free: float  # bytes free on the VAE's device when chosen
    text: str


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def scale_of(vae) -> int:
    """The VAE's spatial ratio (8 for SD3); only image VAEs with one integer ratio tile here."""
    ratio = getattr(vae, "downscale_ratio", 8)
    if not isinstance(ratio, int):
        raise DPIRInputError("this VAE is not an image VAE with one spatial ratio (a video or audio VAE?); use "
                             "ComfyUI's VAE Decode/Encode nodes for it")
    return ratio


def choose(vae, mode: str, shape, kind: str, tile_px: int = TILE, overlap_px: int = OVERLAP) -> VAEChoice:
    """Whole image or tiles for an encode (``shape`` = pixels (B, H, W, C)) or decode (latent (B, C, h, w))."""
    if mode not in TILED_VAE:
        raise DPIRInputError(f"tiled_vae must be one of {TILED_VAE}, got {mode!r}")
    scale = scale_of(vae)
    if kind == "encode":
        b, h, w = shape[0], shape[1] // scale, shape[2] // scale
        estimate_of = lambda th, tw: vae.memory_used_encode((b, 3, th * scale, tw * scale), vae.vae_dtype)  # noqa: E731
    else:
        b, h, w = shape[0], shape[2], shape[3]
        estimate_of = lambda th, tw: vae.memory_used_decode((b, shape[1], th, tw), vae.vae_dtype)  # noqa: E731
    overlap = max(0, overlap_px // scale)
    estimate = float(estimate_of(h, w))
    whole = tv.plan(h, w, max(h, w), 0)
    if mode == "off":
        return VAEChoice(whole, None, estimate, 0.0, f"VAE {kind}: whole image (tiled_vae off)")
    if mode == "on":
        tile = max(overlap + 1, tile_px // scale)
        p = tv.plan(h, w, tile, overlap)
        return VAEChoice(p, tile * scale, estimate, 0.0,
                         f"VAE {kind}: {p.count} tiles of up to {tile * scale} px (tiled_vae on)")
    # weights first, so the free memory is what the activations get (ComfyUI's own VAE.encode/decode order)
    comfy.model_management.load_models_gpu([vae.patcher])
    free = float(comfy.model_management.get_free_memory(vae.device))
    budget = free * MARGIN
    # on the CPU at most CPU_TILE: see the module's docstring
    cap = max(h, w) if torch.device(vae.device).type != "cpu" else max(overlap + 1, min(tile_px, CPU_TILE) // scale)
    if estimate <= budget and max(h, w) <= cap:
        return VAEChoice(whole, None, estimate, free, f"VAE {kind}: whole image (ComfyUI's estimate {_gib(estimate)} "
                         f"fits in {_gib(free)} free × {MARGIN})")
    fit = tv.largest_tile(lambda t: estimate_of(t, t) <= budget, max(h, w), minimum=max(32, 2 * overlap + 8))
    tile = max(min(fit, cap), overlap + 1)
    p = tv.plan(h, w, tile, overlap)
    if not p.tiled:  # the largest tile that fits covers the whole image: the estimate is not linear in its area
        return VAEChoice(p, None, estimate, free, f"VAE {kind}: whole image")
    why = []
    if estimate > budget:
        why.append(f"ComfyUI's estimate for the whole image {_gib(estimate)} > {_gib(free)} free × {MARGIN}")
    if fit > cap:
        why.append(f"at most {cap * scale} px on the CPU")
    return VAEChoice(p, tile * scale, estimate, free,
                     f"VAE {kind}: {p.count} tiles of up to {tile * scale} px ({'; '.join(why)})")


def _one_pass(c, run, tiled, x: torch.Tensor, scale: int) -> torch.Tensor:
    """``run`` on the whole of ``x`` when the choice ``c`` says so, else on each of its tiles once (``tiled``
    blends them), with ComfyUI's progress bar and interrupts."""
    logging.info("ComfyUI-DPIR: %s", c.text)
    if not c.plan.tiled:
        return run(x)
    pbar = comfy.utils.ProgressBar(c.plan.count)

    def one(tile):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return run(tile)
    return tiled(x, one, c.plan, scale, lambda: pbar.update(1))


def decode(vae, z: torch.Tensor, mode: str = "auto", tile_px: int = TILE, overlap_px: int = OVERLAP):
    """(images (B, H, W, C), VAEChoice) for latent ``z`` (B, C, h, w)."""
    c = choose(vae, mode, tuple(z.shape), "decode", tile_px, overlap_px)
    return _one_pass(c, vae.decode, tv.tiled_decode, z, scale_of(vae)), c


def encode(vae, pixels: torch.Tensor, mode: str = "auto", tile_px: int = TILE, overlap_px: int = OVERLAP):
    """(latent (B, C, H/8, W/8), VAEChoice) for images ``pixels`` (B, H, W, C); H and W are cropped to
    multiples of the VAE's ratio, as ComfyUI's encode does."""
    scale = scale_of(vae)
    h, w = pixels.shape[1] // scale * scale, pixels.shape[2] // scale * scale
    if h < scale or w < scale:
        raise DPIRInputError(f"an image of {pixels.shape[2]}×{pixels.shape[1]} px is too small for the VAE "
                             f"(at least {scale} px a side)")
    pixels = pixels[:, :h, :w]
    c = choose(vae, mode, tuple(pixels.shape), "encode", tile_px, overlap_px)
    return _one_pass(c, vae.encode, tv.tiled_encode, pixels, scale), c


class DPIRVAEDecode:
    DESCRIPTION = ("VAE Decode for large images: the whole image when it fits in memory (ComfyUI's own estimate "
                   "against the free VRAM, or RAM on the CPU), otherwise the largest tiles that fit, each region "
                   "decoded once and blended over feathered overlaps — about a third of the work of the core "
                   "'VAE Decode (Tiled)', which decodes three tilings and averages them. Any image VAE.")
    CATEGORY = "DPIR"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT",),
            "vae": ("VAE",),
        }, "optional": {
            "tiled_vae": (list(TILED_VAE), {"default": "auto", "tooltip": TOOLTIP}),
        }}

    def decode(self, samples, vae, tiled_vae="auto"):
        z = samples.get("samples") if isinstance(samples, dict) else None
        if not isinstance(z, torch.Tensor) or z.ndim != 4:
            raise DPIRInputError("'samples' must be an image LATENT (batch, channels, height, width) from a sampler")
        images, choice = decode(vae, z, tiled_vae)
        return {"ui": {"text": [choice.text]}, "result": (images,)}


NODE_CLASS_MAPPINGS = {"DPIRVAEDecode": DPIRVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRVAEDecode": "DPIR VAE Decode (one-pass tiles)"}
