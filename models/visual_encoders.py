"""CLIP vision towers as visual-prompt encoders (Hugging Face ``transformers`` models).

An encoder takes images (B, 3, H, W) in [0, 1], does CLIP preprocessing
itself and returns ``(last_hidden_state, image_embeds)``: the hidden states
before post-layernorm (what DPIR's released code takes the class token
from) and the projected, post-layernormed class token.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import DPIRModelError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Short side → ``size`` (bicubic, antialiased), centre crop, OpenAI mean/std.

    The same steps as Hugging Face's ``CLIPImageProcessor`` and ComfyUI's
    ``clip_preprocess``, done in torch on the images' device (the HF
    processor resamples differently, which differs by interpolation error).
    """
    _, _, h, w = images.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    # 8-bit quantisation: the released code preprocesses uint8 PIL images (ComfyUI rounds the same way)
    x = (x[:, :, top:top + size, left:left + size].clamp(0, 1) * 255).round() / 255
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class HFVisionEncoder:
    """Wraps a ``CLIPVisionModelWithProjection`` as a visual-prompt encoder."""

    def __init__(self, model):
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def projection_dim(self) -> int:
        return self.model.config.projection_dim

    @torch.no_grad()
    def __call__(self, images: torch.Tensor):
        p = next(self.model.parameters())
        pixels = clip_preprocess(images, self.model.config.image_size).to(device=p.device, dtype=p.dtype)
        out = self.model(pixel_values=pixels)
        return out.last_hidden_state, out.image_embeds


def load_hf_vision_encoder(path) -> HFVisionEncoder:
    """A CLIP vision tower saved with ``save_pretrained`` (folder with config.json + model.safetensors)."""
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    if not (path / "config.json").exists():
        raise DPIRModelError(f"'{path}' is not a Hugging Face CLIP vision folder (no config.json)")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(path), use_safetensors=True)
    except (OSError, ValueError) as e:
        raise DPIRModelError(f"cannot load the CLIP vision tower in '{path}': {e}") from None
    return HFVisionEncoder(model.eval())
