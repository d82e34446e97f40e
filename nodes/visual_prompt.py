"""CLIP global-local visual prompt: two CLIP_VISION towers + image → CONDITIONING."""
from __future__ import annotations

import torch

import comfy.model_management

from ..models import dual_prompt as dp
from ..models.errors import DPIRInputError
from .images import to_bchw


class ComfyVisionEncoder:
    """A ComfyUI CLIP_VISION as a core visual encoder: images (B, 3, H, W) → (hidden, image_embeds).

    ComfyUI's ``encode_image`` does the CLIP preprocessing (short side → 224
    bicubic antialias, centre crop, OpenAI mean/std) and returns the hidden
    states before the post-layernorm, as the released code uses them.
    """

    def __init__(self, clip_vision, name: str, batch: int = 16):
        if not hasattr(clip_vision, "encode_image"):
            raise DPIRInputError(f"'{name}' must be a CLIP_VISION (from 'DPIR CLIP Vision Loader' or Load CLIP Vision)")
        self.clip_vision, self.name, self.batch = clip_vision, name, batch

    def __call__(self, images: torch.Tensor):
        hidden, embeds = [], []
        for i in range(0, images.shape[0], self.batch):
            comfy.model_management.throw_exception_if_processing_interrupted()
            out = self.clip_vision.encode_image(images[i:i + self.batch].movedim(1, -1), crop=True)
            hidden.append(out["last_hidden_state"].float())
            embeds.append(out["image_embeds"].float())
        return torch.cat(hidden), torch.cat(embeds)


class DPIRVisualPrompt:
    DESCRIPTION = ("DPIR's CLIP global-local visual prompt. Local tokens: encoder 1's hidden states of the image to "
                   "restore; global tokens: one summary per 1024 px tile (64 px overlap) of the whole image; "
                   "pooled vector: encoder 1's class token + encoder 2's image embedding. Gives 77 visual tokens; "
                   "combine with the T5 prompt in 'DPIR Dual Prompt'.")
    CATEGORY = "DPIR"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("visual_prompt",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision_local": ("CLIP_VISION", {"tooltip": "encoder 1: local tokens + class token (ViT-B/32 in the release)"}),
            "clip_vision_summary": ("CLIP_VISION", {"tooltip": "encoder 2: projected image embedding (ViT-bigG/14 in the release)"}),
            "image": ("IMAGE", {"tooltip": "the LQ image (released code) or the robust-decoded LQ (paper)"}),
        }, "optional": {
            "global_image": ("IMAGE", {"tooltip": "whole-image context when 'image' is a crop; defaults to 'image'"}),
            "global_tile": ("INT", {"default": dp.GLOBAL_TILE, "min": 64, "max": 4096, "step": 8}),
            "global_overlap": ("INT", {"default": dp.GLOBAL_OVERLAP, "min": 0, "max": 2048, "step": 8}),
        }}

    def encode(self, clip_vision_local, clip_vision_summary, image, global_image=None,
               global_tile=dp.GLOBAL_TILE, global_overlap=dp.GLOBAL_OVERLAP):
        enc1 = ComfyVisionEncoder(clip_vision_local, "clip_vision_local")
        enc2 = ComfyVisionEncoder(clip_vision_summary, "clip_vision_summary")
        local = to_bchw(image, "image")
        glob = local if global_image is None else to_bchw(global_image, "global image")
        if glob.shape[0] != local.shape[0] and glob.shape[0] != 1:
            raise DPIRInputError(f"{glob.shape[0]} global images cannot pair with {local.shape[0]} images")
        tokens, pooled = dp.visual_prompt(local, glob, enc1, enc2, None, global_tile, global_overlap)
        return ([[tokens, {"pooled_output": pooled, "dpir_prompt": "visual"}]],)


NODE_CLASS_MAPPINGS = {"DPIRVisualPrompt": DPIRVisualPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRVisualPrompt": "DPIR Visual Prompt (CLIP global-local)"}
