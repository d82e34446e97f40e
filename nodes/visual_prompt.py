"""CLIP global-local visual prompt: two CLIP_VISION towers + image → CONDITIONING."""
from __future__ import annotations

import weakref

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

    def __init__(self, clip_vision, name: str, batch: int | None = None):
        if not hasattr(clip_vision, "encode_image"):
            raise DPIRInputError(f"'{name}' must be a CLIP_VISION (from 'DPIR CLIP Vision Loader' or Load CLIP Vision)")
        self.clip_vision, self.name, self.batch = clip_vision, name, batch  # None: sized by memory

    def __call__(self, images: torch.Tensor):
        hidden, embeds = [], []
        i, batch = 0, self.batch or 1
        while i < images.shape[0]:
            comfy.model_management.throw_exception_if_processing_interrupted()
            out = self.clip_vision.encode_image(images[i:i + batch].movedim(1, -1), crop=True)
            hidden.append(out["last_hidden_state"].float())
            embeds.append(out["image_embeds"].float())
            i += batch
            if self.batch is None:  # after one image the token count and width are known
                batch = memory_batch(self.clip_vision, out["last_hidden_state"].shape[1:])
        return torch.cat(hidden), torch.cat(embeds)


MAX_BATCH = 64
BATCH_MARGIN = 0.5  # of the free memory on the tower's device


def memory_batch(clip_vision, tokens_width) -> int:
    """Images per tower call that fit in half the free memory of the tower's device: per image about 24 activations
    of (tokens × width) (residual, q/k/v, 4× MLP, norms) and one (tokens × tokens) score map per 64 channels, in
    fp32 (an upper bound for fp16/bf16 towers)."""
    t, d = int(tokens_width[0]), int(tokens_width[1])
    per_image = 4 * (24 * t * d + max(1, d // 64) * t * t)
    device = getattr(clip_vision, "load_device", None)
    free = comfy.model_management.get_free_memory(device) if device is not None else 0
    return max(1, min(MAX_BATCH, int(free * BATCH_MARGIN // per_image)))


# global tokens of recent images, so the whole image's global branch runs once when both 'DPIR Visual Prompt' and
# 'DPIR Tiled Global-Local Prompt' read the same IMAGE (the same tensor object from 'DPIR Robust VAE Encode')
_GLOBAL: list = []
_GLOBAL_KEEP = 4


def global_tokens(image: torch.Tensor, images_bchw: torch.Tensor, enc1, enc2, tile=dp.GLOBAL_TILE,
                  overlap=dp.GLOBAL_OVERLAP) -> torch.Tensor:
    """``dp.global_summary`` of ``images_bchw`` (a view of the node input ``image``), reused while that same tensor
    is alive and unmodified and the towers are the same objects."""
    try:
        version = image._version
    except RuntimeError:  # an inference-mode tensor (how ComfyUI runs nodes) cannot be changed in place outside it
        version = None
    key = (version, id(enc1.clip_vision), id(enc2.clip_vision), tile, overlap, tuple(image.shape))
    for ref, k, tokens in _GLOBAL:
        if ref() is image and k == key:
            return tokens
    tokens = dp.global_summary(images_bchw, enc1, enc2, tile, overlap)
    _GLOBAL[:] = [e for e in _GLOBAL if e[0]() is not None][-(_GLOBAL_KEEP - 1):] + [(weakref.ref(image), key, tokens)]
    return tokens


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
        glob_tokens = global_tokens(image if global_image is None else global_image, glob, enc1, enc2, global_tile,
                                    global_overlap)
        tokens, pooled = dp.visual_prompt(local, glob, enc1, enc2, None, global_tile, global_overlap,
                                          global_tokens=glob_tokens)
        return ([[tokens, {"pooled_output": pooled, "dpir_prompt": "visual"}]],)


NODE_CLASS_MAPPINGS = {"DPIRVisualPrompt": DPIRVisualPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRVisualPrompt": "DPIR Visual Prompt (CLIP global-local)"}
