"""Robust VAE encode: the LQ image → LQ latent (and its robust-decoded image)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.utils

from ..models.errors import DPIRInputError, DPIRModelError
from .images import to_bchw, to_bhwc

RESIZE_MODES = ("long side", "upscale factor", "keep size")
TILED_VAE = ("auto", "on", "off")
TILED_ABOVE = 2048 * 2048  # pixels
MULTIPLE = 16  # 8 px per latent pixel × patch 2


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


def _output_used(prompt, unique_id, slot: int) -> bool:
    """Whether any node of the running prompt reads output ``slot`` of node ``unique_id`` (True when unknown)."""
    if prompt is None or unique_id is None:
        return True
    link = [str(unique_id), slot]
    return any(isinstance(v, list) and len(v) == 2 and [str(v[0]), v[1]] == link
               for node in prompt.values() for v in node.get("inputs", {}).values())


class DPIRRobustVAEEncode:
    DESCRIPTION = ("Resizes the low-quality image (official default: long side 1024, Lanczos) and encodes it with "
                   "DPIR's robust VAE. Outputs the LQ latent (for 'DPIR Apply LQ Condition' and as the sampler's "
                   "latent), the resized LQ image (released code: input of the visual prompt and the colour fix) "
                   "and the robust-decoded LQ image (the paper's input of the visual prompt). Sizes are padded to "
                   "multiples of 16 for the model; the colour fix crops the result back to the exact size.")
    CATEGORY = "DPIR"
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("lq_latent", "lq_image", "robust_decoded")

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
            "tiled_vae": (list(TILED_VAE), {"default": "auto", "tooltip":
                          "encode/decode in 1024 px tiles: 'auto' above 2048×2048 px (flat VRAM at 4K–8K)"}),
        }, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    def encode(self, image, vae, resize, long_side, upscale_factor, tiled_vae="auto", prompt=None, unique_id=None):
        if getattr(vae, "latent_channels", None) != 16:
            raise DPIRModelError(f"this VAE has {getattr(vae, 'latent_channels', '?')} latent channels; DPIR needs "
                                 "the robust SD3 VAE (16 channels) from 'DPIR Robust VAE Loader'")
        x = to_bchw(image, "LQ image")
        h, w = target_size(x.shape[2], x.shape[3], resize, long_side, upscale_factor)
        if h * w > 16384 * 16384:
            raise DPIRInputError(f"the requested output {w}×{h} is larger than 16384² pixels; lower the size")
        if (h, w) != tuple(x.shape[2:]):
            x = comfy.utils.common_upscale(x, w, h, "lanczos", "disabled").clamp(0, 1)
        lq = to_bhwc(x)
        padded = pad_to_multiple(x)
        pbar = comfy.utils.ProgressBar(2)
        tiled = tiled_vae == "on" or (tiled_vae == "auto" and h * w > TILED_ABOVE)
        if tiled:
            latent = vae.encode_tiled(to_bhwc(padded), tile_x=1024, tile_y=1024, overlap=64)
        else:
            latent = vae.encode(to_bhwc(padded))
        pbar.update(1)
        if _output_used(prompt, unique_id, 2):
            decoded = vae.decode_tiled(latent, tile_x=128, tile_y=128, overlap=16) if tiled else vae.decode(latent)
            decoded = decoded[:, :h, :w].contiguous().clamp(0, 1)
        else:  # nothing reads it: spare a whole VAE decode (the output is then the resized LQ)
            decoded = lq
        pbar.update(1)
        return ({"samples": latent}, lq, decoded)


NODE_CLASS_MAPPINGS = {"DPIRRobustVAEEncode": DPIRRobustVAEEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRRobustVAEEncode": "DPIR Robust VAE Encode"}
