"""Robust VAE encode: the LQ image → LQ latent; robust decode: that latent → the cleaned-up LQ image.

Two nodes, not one node with an optional decode output: ComfyUI caches a node's outputs by its inputs only,
so an output computed or skipped according to what is wired downstream would come back stale from the cache
once the wiring changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.utils

from ..models.errors import DPIRInputError, DPIRModelError
from . import tiled_vae as vae_tiles
from .checks import check_lq_latent
from .images import to_bchw, to_bhwc
from .tiled_vae import TILED_VAE

RESIZE_MODES = ("long side", "upscale factor", "keep size")
MULTIPLE = 16  # 8 px per latent pixel × patch 2
LQ_SIZE = "dpir_lq_size"  # the LQ size before padding, carried in the LATENT for the robust decode


def target_size(h: int, w: int, mode: str, long_side: int, factor: float) -> tuple[int, int]:
    if mode == "long side":
        scale = long_side / max(h, w)
    elif mode == "upscale factor":
        scale = factor
    elif mode == "keep size":
        scale = 1.0
    else:
        raise DPIRInputError(f"unknown resize mode {mode!r}; choose one of {RESIZE_MODES}")
    return max(1, round(h * scale)), max(1, round(w * scale))


def pad_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Replicate-pad (B, C, H, W) at the bottom/right; the colour fix crops the output back."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


class DPIRRobustVAEEncode:
    DESCRIPTION = ("Resizes the low-quality image (official default: long side 1024, Lanczos) and encodes it with "
                   "DPIR's robust VAE. Outputs the LQ latent (for 'DPIR Apply LQ Condition' and as the sampler's "
                   "latent) and the resized LQ image (released code: input of the visual prompt and the colour "
                   "fix). Sizes are padded to multiples of 16 for the model; the colour fix crops the result back "
                   "to the exact size. For the paper's robust-decoded LQ add 'DPIR Robust VAE Decode (LQ)'.")
    CATEGORY = "DPIR"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT", "IMAGE")
    RETURN_NAMES = ("lq_latent", "lq_image")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "the low-quality photo"}),
            "vae": ("VAE", {"tooltip": "the robust VAE from 'DPIR Robust VAE Loader'"}),
            "resize": (list(RESIZE_MODES), {"default": "long side"}),
            "long_side": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 8,
                                  "tooltip": "output long side in pixels (resize = long side)"}),
            "upscale_factor": ("FLOAT", {"default": 4.0, "min": 0.125, "max": 16.0, "step": 0.05,
                                         "tooltip": "output size / input size (resize = upscale factor)"}),
        }, "optional": {
            "tiled_vae": (list(TILED_VAE), {"default": "auto", "tooltip": vae_tiles.TOOLTIP}),
        }}

    def encode(self, image, vae, resize, long_side, upscale_factor, tiled_vae="auto"):
        _check_vae(vae)
        x = to_bchw(image, "LQ image")
        h, w = target_size(x.shape[2], x.shape[3], resize, long_side, upscale_factor)
        if h * w > 16384 * 16384:
            raise DPIRInputError(f"the requested output {w}×{h} is larger than 16384² pixels; lower the size")
        if (h, w) != tuple(x.shape[2:]):
            x = comfy.utils.common_upscale(x, w, h, "lanczos", "disabled").clamp_(0, 1)
        lq = to_bhwc(x)
        padded = pad_to_multiple(x)
        # the VAE reads the LQ image itself unless it needs padding: one image-size buffer less (0.8 GB at 8K)
        pixels = lq if padded is x else to_bhwc(padded)
        del x, padded
        latent, choice = vae_tiles.encode(vae, pixels, tiled_vae)
        return {"ui": {"text": [choice.text]}, "result": ({"samples": latent, LQ_SIZE: (h, w)}, lq)}


class DPIRRobustVAEDecode:
    DESCRIPTION = ("Decodes the LQ latent of 'DPIR Robust VAE Encode' back to an image: the LQ cleaned up by the "
                   "robust encoder, which the paper feeds to 'DPIR Visual Prompt' instead of the LQ image (the "
                   "released code uses the LQ image). Cropped to the exact LQ size. Costs one VAE decode.")
    CATEGORY = "DPIR"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("robust_decoded",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lq_latent": ("LATENT", {"tooltip": "lq_latent of 'DPIR Robust VAE Encode'"}),
            "vae": ("VAE", {"tooltip": "the robust VAE from 'DPIR Robust VAE Loader'"}),
        }, "optional": {
            "tiled_vae": (list(TILED_VAE), {"default": "auto", "tooltip": vae_tiles.TOOLTIP}),
        }}

    def decode(self, lq_latent, vae, tiled_vae="auto"):
        _check_vae(vae)
        z = check_lq_latent(lq_latent)
        h, w = lq_latent.get(LQ_SIZE, (z.shape[-2] * 8, z.shape[-1] * 8))
        decoded, choice = vae_tiles.decode(vae, z, tiled_vae)
        return {"ui": {"text": [choice.text]}, "result": (decoded[:, :h, :w].contiguous().clamp(0, 1),)}


def _check_vae(vae):
    if getattr(vae, "latent_channels", None) != 16:
        raise DPIRModelError(f"this VAE has {getattr(vae, 'latent_channels', '?')} latent channels; DPIR needs "
                             "the robust SD3 VAE (16 channels) from 'DPIR Robust VAE Loader'")


NODE_CLASS_MAPPINGS = {"DPIRRobustVAEEncode": DPIRRobustVAEEncode, "DPIRRobustVAEDecode": DPIRRobustVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRRobustVAEEncode": "DPIR Robust VAE Encode",
                              "DPIRRobustVAEDecode": "DPIR Robust VAE Decode (LQ)"}
